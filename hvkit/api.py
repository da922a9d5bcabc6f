"""The public plugin API: everything a plugin may rely on, exported from one place.

A plugin module implements hooks from :mod:`hvkit.hookspecs` with :data:`hookimpl` and
may declare the API version it needs with a module attribute
``HVKIT_API_VERSION = 1`` (the major version). Only names exported here are stable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar, Iterator, Protocol, runtime_checkable

import numpy as np
import pluggy
import torch
from torch import nn

API_VERSION: tuple[int, int] = (1, 19)
"""(major, minor): a plugin declaring another major version is refused with a clear message.

1.1 added the momentum teacher: ``ViewLoss.needs_teacher``, ``ViewLoss.observe_teacher`` and
``Trainer.fit(after_step=...)``. 1.2 added reference sets: ``MetricLoss.accepts_reference`` and
``forward(..., ref_emb=None, ref_labels=None)``. 1.3 added ``ViewLoss.takes_local_views`` (multi-crop
views in one call), ``ViewLoss.symmetric`` (a teacher loss whose second global view is no query)
and reference sets for miners: a miner with ``accepts_reference = True`` is called
``miner(embeddings, labels, ref_emb=None, ref_labels=None)`` and returns tuples whose anchors index
``embeddings`` and whose partners index ``ref_emb`` (pytorch-metric-learning's semantics; without a
reference the batch is its own and no (i, i) pair is returned); ``xbm`` mines the batch against its
memory through it. 1.4 added local features: ``ViewLoss.takes_feature_maps`` (the views' last feature
maps and their cells' positions in the original image), the loss context argument ``map_channels``
and the optional backbone methods ``feature_map(images)`` and ``pool(maps)`` with ``map_channels``.
1.5 added samplers that learn from the model: ``BatchSampler``'s optional ``needs_embeddings``,
``refresh_every``, ``observe_embeddings``, ``state_dict`` and ``load_state_dict``. 1.6 added the
momentum teacher in one call: a ``ViewLoss`` that declares both ``needs_teacher`` and
``takes_local_views`` gets every view of a step at once, ``forward(o_1, o_2, *local, teacher=(t_1, t_2))``,
and pairs them itself; ``needs_teacher`` may be set per instance (``tico``'s ``teacher``). 1.7 added
recipe checks across stages: a stage factory's optional ``check_recipe(spec, earlier)`` (see :class:`Stage`).
1.8 calls ``check_recipe(spec, earlier)`` on the factory of every kind, so a plugin checks at validation
what its signature's types cannot say (the ``torchvision`` backbone's ``arch`` and ``kwargs``).
1.9 gave each stage an optional ``data`` of its own (a dataset spec in place of the recipe's): the
stage's ``ctx.dataset`` and ``ctx.data_seed`` are then that collection's, and ``data`` is no longer
a name a stage factory may take as a parameter; and ``Split.groups``, each writer's group, which
``metric_train`` gives a sampler as the context argument ``groups`` (each image's group, or None).
1.10 added set verifiers: a pair verifier (head) with ``score_pairs(embeddings, first, second) ->
scores (P,)`` scores the pairs ``(first[n], second[n])`` among every row of ``embeddings`` (its
split's images), in place of ``forward(e1, e2)``; ``hvkit verify`` refuses it for two files.
1.11 passes ``check_recipe`` the registry the recipe is validated against when it declares a
parameter ``registry``: ``check_recipe(spec, earlier, registry)`` looks up nested components there;
and it reserves the stage key ``like`` (a stage starting from an earlier stage's settings), which a
stage factory may no longer take as a parameter. 1.12 builds every transform, miner, evaluator and
loss that takes no context argument once at validation, so a value its constructor refuses with
``ValueError`` is a recipe error before any stage runs. 1.13 builds heads and backbones too, and
components with a context argument with stand-ins for it (``hvkit.recipe.validate.STAND_INS``): a
value is refused only when every combination of stand-ins refuses it. 1.14 builds stages and
samplers too: a stage with no context, and each sampler in a stage with that stage's ``batch_size``
over a large stand-in collection of writers and groups, so a stage factory must stay cheap to build
(no data, no files: those belong in ``run``). 1.15 added ``MetricLoss.reads_norms``: a loss that reads
each embedding's length (AdaFace) gets the embeddings unnormalised from a stage that would L2-normalise
them. 1.16 added ``Split.documents``, each image's source document, and ``EvalData.documents`` /
``val_documents``, which the ``evaluate`` stage fills from it. 1.17 hands a sampler ``documents``, each
image's document as int codes (None when the data names none), as it hands ``groups``. 1.18 added
``Trainer.fit(monitor=...)``: a stage's figures of held-out data, run after every ``train.monitor_every``-th
epoch and logged with that step (a stage that passes none refuses the setting), and
``hvkit.testing.failing_after_step`` for resume tests. 1.19 runs the monitor on ``train.ema``'s averaged
weights, and ``stage_monitor(..., statistics_from=images)`` re-estimates BatchNorm's statistics on a stage's
``precise_bn`` images before each check: a check reads the model the stage would save at that step.
"""

hookimpl = pluggy.HookimplMarker("hvkit")

KINDS: tuple[str, ...] = (
    "backbone", "head", "dataset", "transform", "sampler",
    "miner", "loss", "evaluator", "stage", "command",
)


@dataclass(frozen=True)
class ComponentKind:
    """Metadata in ``Annotated[...]`` saying that a recipe value names a plugin of ``kind``."""

    kind: str


class Component:
    """Type hint for a recipe parameter that names a plugin: ``loss: Component["loss"]``.

    In a recipe the value is the plugin name, or a mapping ``{name: ..., **params}``; the
    validator checks the name and the params against that plugin's factory. A *stage*
    factory receives the spec unresolved and builds it at run time with ``ctx.build``
    (when context such as ``embedding_dim`` is known); any other factory receives the
    built component, made with the same context arguments as its owner.
    """

    def __class_getitem__(cls, kind: str) -> Any:
        if kind not in KINDS:
            raise TypeError(f"Component[{kind!r}]: kind must be one of {', '.join(KINDS)}")
        return Annotated[str | dict, ComponentKind(kind)]


@dataclass(frozen=True)
class StageRef:
    """Metadata: the value names an earlier stage of the same recipe (e.g. whose backbone to load)."""


@dataclass(frozen=True)
class ExistingPath:
    """Metadata: the value is a path that must exist before the run starts."""


@dataclass(frozen=True)
class OptimizerName:
    """Metadata: ``{name: <torch.optim class or LARS>, **kwargs}``, checked against that class."""


@dataclass(frozen=True)
class SchedulerName:
    """Metadata: ``{name: <torch.optim.lr_scheduler class>, **kwargs}``; ``null`` for none."""


StageOutput = Annotated[str, StageRef()]
"""Type hint: the name of an earlier stage whose outputs this stage uses."""
FilePath = Annotated[str, ExistingPath()]
"""Type hint: a file or folder that must exist."""
OptimizerSpec = Annotated[dict, OptimizerName()]
"""Type hint: an optimiser, e.g. ``{name: AdamW, lr: 1e-3, weight_decay: 1e-4}``."""
SchedulerSpec = Annotated[dict, SchedulerName()]
"""Type hint: an LR scheduler, e.g. ``{name: CosineAnnealingLR}`` (T_max filled in by hvkit)."""


class MetricLoss(nn.Module):
    """A loss over labelled embeddings: ``forward(embeddings (B,D), labels (B,), indices_tuple=None)``.

    ``indices_tuple`` is a miner's output in pytorch-metric-learning's format. Set
    ``needs_global_batch = True`` when the loss must see the whole batch across
    processes; the core then gathers embeddings and labels before calling it. A loss may
    offer ``terms() -> dict[str, float]``: the parts of its last value, logged by stages.

    A loss with ``reads_norms = True`` reads each embedding's length (AdaFace's image quality): a stage
    that L2-normalises the embeddings for its loss (``metric_train``'s ``normalize``) leaves them as they
    are for it.

    A loss with ``accepts_reference = True`` also takes keyword arguments ``ref_emb`` (R, D)
    and ``ref_labels`` (R,), as in pytorch-metric-learning: the rows of ``embeddings`` are the
    anchors and the rows of ``ref_emb`` their partners, so it builds a B x R matrix only. An
    ``indices_tuple`` then indexes (anchor rows of ``embeddings``, partner rows of
    ``ref_emb``); without one every pair (i, j) of the two sets is used, i = j included (the
    reference is another set). Cross-batch memory (``xbm``) needs it.
    """

    needs_global_batch: ClassVar[bool] = False
    accepts_reference: ClassVar[bool] = False
    reads_norms: ClassVar[bool] = False

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        raise NotImplementedError


class ViewLoss(nn.Module):
    """A self-supervised loss over two views of one batch: ``forward(z_a (B,D), z_b (B,D))``.

    ``needs_teacher = True`` (an instance may set it from its settings): ``z_b`` must be a momentum
    teacher's output, given without gradient (BYOL).
    ``takes_local_views = True``: ``forward(z_a, z_b, *local_views)`` takes every view of a step
    at once, the two global views first, and ``ssl_pretrain`` calls it once per step rather than
    averaging it over pairs of views (SwAV computes each global view's codes once, over the batch).
    ``symmetric = False`` (an instance may set it from its settings) on a ``needs_teacher`` loss:
    only the first global view (and any local view) is compared with the teacher's other global
    views, ``loss(z_1, t_2)`` rather than ``(loss(z_1, t_2) + loss(z_2, t_1)) / 2`` (MoCo's asymmetric form).
    ``needs_teacher`` and ``takes_local_views`` both (1.6; TiCo's momentum variant, whose running
    covariance moves once a step): ``forward(o_1, o_2, *local_views, teacher=(t_1, t_2))`` takes
    every view of a step in one call, the online outputs of the two global views and of the local
    views and the teacher's of the two global views (no gradient), and the loss pairs them
    itself; ``ssl_pretrain``'s pairs, which such a loss should follow, are each online view
    against the teacher's other global views — (o_1, t_2), (o_2, t_1) (without ``symmetric``
    not the latter) and each local view against both t_1 and t_2.
    ``takes_feature_maps = True`` (VICRegL): ``forward(z_a, z_b, maps=(m_a, m_b), positions=(p_a, p_b))``
    also takes each view's last backbone feature map m (B, C, h, w), the one the backbone pools into
    its features, and the position p (B, h, w, 2) of every map cell's centre in the original
    image's normalised (x, y) coordinates ([-1, 1], ``affine_grid``'s); ``positions`` is None when
    the transform cannot say where its views came from. The loss is built with the context
    argument ``map_channels`` (C). With ``takes_local_views`` too it gets multi-crop views in one
    call, ``forward(z_1, z_2, *local, maps=(m_1, m_2, *local maps), positions=(p_1, p_2, ...))``.
    """

    needs_global_batch: ClassVar[bool] = True
    needs_teacher: bool = False
    takes_local_views: ClassVar[bool] = False
    takes_feature_maps: ClassVar[bool] = False
    symmetric: bool = True

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def observe_teacher(self, teacher_views: list[torch.Tensor]) -> None:
        """Once per training step, after the loss: the teacher's outputs of the global views (DINO's centre).

        Called by ``ssl_pretrain`` for a ``needs_teacher`` loss, with no gradient; the outputs
        are gathered from every process when the loss declares ``needs_global_batch``, this
        process's own otherwise. Keep what it updates in buffers, so checkpoints hold it.
        Does nothing by default.
        """


@dataclass
class Split:
    """One writer-disjoint part of a dataset, held in memory.

    ``images`` is (N, C, H, W) uint8 with ink bright (high values) on a dark background;
    ``labels`` (N,) int64 indexes ``writers``; ``paths`` names each image's source.
    ``groups`` (1.9), when the dataset has them, names each writer's group, parallel to
    ``writers`` — e.g. an Omniglot drawer's alphabet: what a writer shares with others that is
    not their hand, so a pair protocol can draw different-writer partners from the same group.
    ``documents`` (1.16), when the dataset knows them, names each image's source document,
    parallel to ``images`` — a CEDAR letter copy, an IAM form: images of one document share a
    sitting, pen and paper, so a protocol can ask for a writer's samples from two documents.
    """

    images: torch.Tensor
    labels: np.ndarray
    writers: list[str]
    paths: list[str] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    documents: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> "Split":
        index = np.asarray(index, dtype=np.int64)
        return Split(self.images[torch.from_numpy(index)], self.labels[index], self.writers,
                     [self.paths[i] for i in index] if self.paths else [], self.groups,
                     [self.documents[i] for i in index] if self.documents else [])

    def image_groups(self) -> np.ndarray:
        """(N,) int64: each image's writer's group, as an index into the sorted distinct ``groups``."""
        if not self.groups:
            raise ValueError("the data names no writer groups (Split.groups is empty)")
        _, code = np.unique(np.asarray(self.groups), return_inverse=True)
        return code.astype(np.int64)[self.labels]

    def image_documents(self) -> np.ndarray | None:
        """(N,) int64: each image's document as an index into the sorted distinct ``documents``; None if unknown."""
        if not self.documents:
            return None
        return np.unique(np.asarray(self.documents), return_inverse=True)[1].astype(np.int64)


@runtime_checkable
class WriterDataset(Protocol):
    """What a dataset plugin returns: writer-disjoint splits of writer-labelled images.

    ``splits`` holds at least ``"train"`` and ``"test"`` and usually ``"val"``;
    ``synthetic`` is True for generated data (the run says so loudly);
    ``info`` is written into the run's metrics (source, counts, duplicates found …).
    """

    name: str
    synthetic: bool
    splits: dict[str, Split]
    info: dict[str, Any]


@runtime_checkable
class BatchSampler(Protocol):
    """Yields lists of dataset indices, one list a batch; deterministic given seed and epoch.

    Under several processes each rank yields its own disjoint share of every epoch.

    A sampler that learns from the model (1.5; ``hard_class``) declares ``needs_embeddings = True``,
    an int ``refresh_every`` (epochs) and ``observe_embeddings(embeddings)``: before each epoch
    whose index is a multiple of ``refresh_every``, the training stage (``metric_train``) passes
    the current L2-normalised embeddings (N, D) float numpy array of every image its ``labels``
    index, rows in their order, computed in eval mode without augmentation on rank 0 and the same
    on every rank. Batches then depend on (seed, epoch, the embeddings last observed). Its
    ``state_dict() -> dict[str, np.ndarray]`` and ``load_state_dict(state)`` carry what it learnt
    into the stage's checkpoints, so a run resumed inside an epoch draws that epoch's batches again.
    Declare ``needs_embeddings`` on the class: the pre-training stages refuse such a sampler at
    validation (1.14), where a sampler is built once over stand-in writers with its stage's ``batch_size``.
    """

    def __iter__(self) -> Iterator[list[int]]: ...

    def __len__(self) -> int: ...

    def set_epoch(self, epoch: int) -> None: ...


@runtime_checkable
class Stage(Protocol):
    """A pipeline step. ``run`` returns its outputs (JSON-serialisable; paths relative to the run dir).

    The factory (a class) may offer a static ``check_recipe(spec, earlier)`` (1.7), called when the
    recipe is validated, before any work: ``spec`` is the stage's resolved settings, ``earlier``
    maps each earlier stage's name to ``(factory, resolved spec)``. It raises ``ValueError`` for a
    setting that cannot work with those stages (e.g. a name that an earlier stage does not
    produce), or ``hvkit.errors.RecipeError(message, path="key.0")`` to name the key. Validation
    also builds the stage once (1.14), so its constructor checks its own values and reads nothing.
    """

    def run(self, ctx: Any) -> dict[str, Any]: ...


@runtime_checkable
class Evaluator(Protocol):
    """Computes metrics from embeddings or pair scores.

    ``requires`` names the shared results it needs (see :mod:`hvkit.evaluation`); each is
    computed once per evaluation however many evaluators ask for it.
    """

    requires: frozenset[str]

    def __call__(self, data: Any, shared: Any) -> dict[str, Any]: ...


__all__ = [
    "API_VERSION", "hookimpl", "KINDS", "Component", "ComponentKind", "StageRef", "ExistingPath",
    "OptimizerName", "SchedulerName", "StageOutput", "FilePath", "OptimizerSpec", "SchedulerSpec",
    "MetricLoss",
    "ViewLoss", "Split", "WriterDataset", "BatchSampler", "Stage", "Evaluator",
]
