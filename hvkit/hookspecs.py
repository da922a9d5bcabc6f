"""The hooks a plugin implements: one per kind, each in the register-callback style.

A plugin module decorates functions with :data:`hvkit.api.hookimpl`; each hook receives
``register(name, factory)`` and calls it once per component it provides. A recipe then
refers to the component by ``name``; the factory's signature and type hints are its
recipe parameters. ``register_commands`` receives a ``register(command)`` taking a
:class:`click.Command` instead.

What each factory must return is stated per hook; arguments listed as *context* are
passed by hvkit at run time and may not be set in a recipe, except those of
:data:`RECIPE_CONTEXT_ARGS`, which a recipe may set to override hvkit's value.
"""

from __future__ import annotations

from typing import Callable

import pluggy

hookspec = pluggy.HookspecMarker("hvkit")

Register = Callable[[str, Callable], None]


@hookspec
def register_backbones(register: Register) -> None:
    """Backbones: ``factory(**params) -> nn.Module`` mapping images (B,C,H,W) to features (B,D).

    The module exposes ``embedding_dim`` (D). Context: ``in_channels``. A convolutional backbone may
    also offer its last feature map (API 1.4): ``feature_map(images) -> (B, map_channels, h, w)``
    and ``pool(maps) -> (B, D)``, with ``pool(feature_map(x))`` equal to ``forward(x)``.
    """


@hookspec
def register_heads(register: Register) -> None:
    """Heads: ``factory(in_dim, **params) -> nn.Module`` mapping (B,in_dim) to (B,out_dim).

    The module exposes ``out_dim``. Context: ``in_dim``. A *pair verifier* head sets
    ``pair_verifier = True`` and maps two embeddings to a same-writer score instead:
    ``forward(e1, e2) -> logits (B, 2)`` (trained with cross-entropy) or ``scores (B,)``;
    it may offer ``fit(embeddings, labels, unlabelled)`` for statistics of the labelled training
    embeddings, their writer labels and the embeddings of all training images (labels unused).
    """


@hookspec
def register_datasets(register: Register) -> None:
    """Datasets: ``factory(**params) -> hvkit.api.WriterDataset`` (writer-labelled images).

    Context: ``seed`` (the recipe's ``seed``, unless the recipe sets ``data.seed``: the split
    then stays fixed while the training seed varies).
    """


@hookspec
def register_transforms(register: Register) -> None:
    """Transforms: ``factory(**params) -> callable(images, generator) -> images``.

    Batched: images are (B,C,H,W) float in [0,1] (ink bright) on any device; all randomness
    comes from the given :class:`torch.Generator` (on the images' device), so runs are
    reproducible and resumable.
    """


@hookspec
def register_samplers(register: Register) -> None:
    """Samplers: ``factory(labels, batch_size, seed, rank, world_size, **params) -> hvkit.api.BatchSampler``.

    Context: ``labels``, ``batch_size``, ``seed``, ``rank``, ``world_size``; ``groups`` (1.9), each image's
    writer's group as int codes, and ``documents`` (1.17), each image's source document as int codes, each
    None when the data names none.
    """


@hookspec
def register_miners(register: Register) -> None:
    """Miners: ``factory(**params) -> callable(embeddings, labels) -> indices tuple`` (PML format).

    A miner with ``accepts_reference = True`` (API 1.3) is also called ``miner(embeddings, labels,
    ref_emb=..., ref_labels=...)``: anchors index ``embeddings``, partners ``ref_emb``.
    """


@hookspec
def register_losses(register: Register) -> None:
    """Losses: ``factory(**params) -> hvkit.api.MetricLoss | hvkit.api.ViewLoss | nn.Module``.

    Context: ``embedding_dim``, ``num_classes``, and ``map_channels`` (the backbone's feature-map
    channels) for a ``ViewLoss`` that ``takes_feature_maps``.
    """


@hookspec
def register_evaluators(register: Register) -> None:
    """Evaluators: ``factory(**params) -> hvkit.api.Evaluator``."""


@hookspec
def register_stages(register: Register) -> None:
    """Pipeline stages: ``factory(**params) -> hvkit.api.Stage`` (pre-train, train, evaluate …)."""


@hookspec
def register_commands(register: Callable) -> None:
    """Extra CLI subcommands: ``register(command)`` with a :class:`click.Command`."""


KIND_HOOKS: dict[str, str] = {
    "backbone": "register_backbones",
    "head": "register_heads",
    "dataset": "register_datasets",
    "transform": "register_transforms",
    "sampler": "register_samplers",
    "miner": "register_miners",
    "loss": "register_losses",
    "evaluator": "register_evaluators",
    "stage": "register_stages",
    "command": "register_commands",
}

CONTEXT_ARGS: dict[str, frozenset[str]] = {
    "backbone": frozenset({"in_channels"}),
    "head": frozenset({"in_dim"}),
    "dataset": frozenset({"seed"}),
    "transform": frozenset(),
    "sampler": frozenset({"labels", "batch_size", "seed", "rank", "world_size", "groups", "documents"}),
    "miner": frozenset(),
    "loss": frozenset({"embedding_dim", "num_classes", "map_channels"}),
    "evaluator": frozenset(),
    "stage": frozenset(),
    "command": frozenset(),
}

RECIPE_CONTEXT_ARGS: dict[str, frozenset[str]] = {"dataset": frozenset({"seed"})}
"""Context arguments a recipe may set: ``data.seed`` fixes the split and the evaluation pairs."""

STAGE_DATA = "data"
"""The stage key hvkit keeps for a stage's own dataset, in place of the recipe's ``data`` (API 1.9)."""

STAGE_LIKE = "like"
"""The stage key naming an earlier stage whose settings this one starts from (API 1.11)."""
