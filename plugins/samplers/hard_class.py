"""Hard-class ("doppelganger") sampling: PK batches whose writers come with their most confusable writers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Literal

import numpy as np

from .pk import PKSampler, gumbel_top


class HardClassSampler(PKSampler):
    """PK batches in which seed writers come with their nearest writers in the model's embedding (doppelgangers).

    Class-level hard-negative mining (Smirnov et al. 2017, "Doppelganger Mining for Face
    Representation Learning"; Suh et al. 2019, "Stochastic Class-based Hard Example Mining for
    Deep Metric Learning"; Harwood et al. 2017, "Smart Mining for Deep Metric Learning"). The
    sampler declares ``needs_embeddings``: before every ``refresh_every``-th epoch the training
    stage passes the current L2-normalised embeddings of all its images to
    :meth:`observe_embeddings`, which averages them per writer and keeps each writer's
    ``neighbours`` nearest other writers by cosine of their normalised means (default P, at most
    writers − 1). Each batch then fills ``hard_fraction`` of its P writer slots with groups of
    ``group_size`` writers: a seed writer and ``group_size − 1`` of its candidates, both drawn in
    proportion to the chunks they have left; the other slots are drawn as PK draws them. Everything
    else is ``pk``'s: K images per writer, the chunk bookkeeping that shows each image about once
    an epoch, ``small_classes``, ``batches_per_epoch``, ``across_documents``, slices per rank (a group never straddles
    two ranks: ``group_size`` must divide each rank's P / W writers).

    Until embeddings are observed, and with ``hard_fraction: 0``, batches are exactly ``pk``'s
    for the same settings. Batches depend on ``(seed, epoch)`` and the embeddings last observed.
    """

    needs_embeddings: ClassVar[bool] = True

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, samples_per_class: int = 4,
                 small_classes: Literal["replace", "skip"] = "replace",
                 batches_per_epoch: int | None = None, neighbours: int | None = None,
                 hard_fraction: float = 0.5, group_size: int = 2, refresh_every: int = 1,
                 across_documents: bool = False, documents: Sequence[int] | None = None) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size, samples_per_class, small_classes,
                         batches_per_epoch, across_documents, documents)
        p, writers = self.classes_per_batch, len(self._members)
        if not 0.0 <= hard_fraction <= 1.0:
            raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
        if not 2 <= group_size <= p:
            raise ValueError(f"group_size must be between 2 and the batch's {p} writers, got {group_size}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1 (epochs), got {refresh_every}")
        neighbours = min(p, writers - 1) if neighbours is None else neighbours
        if not group_size - 1 <= neighbours <= writers - 1:
            raise ValueError(f"neighbours must be between group_size - 1 = {group_size - 1} and the "
                             f"{writers - 1} other writers, got {neighbours}")
        self.groups = int(hard_fraction * p / group_size + 1e-9)
        if hard_fraction > 0 and self.groups == 0:
            raise ValueError(f"hard_fraction {hard_fraction} of the batch's {p} writers holds no group of "
                             f"{group_size}; set it to at least {group_size / p:.3g} or lower group_size")
        if self.groups and world_size > 1 and (p // world_size) % group_size:
            raise ValueError(f"group_size {group_size} must divide the {p // world_size} writers each of the "
                             f"{world_size} ranks gets, so no group is split across ranks")
        self.neighbours, self.hard_fraction = neighbours, hard_fraction
        self.group_size, self.refresh_every = group_size, refresh_every
        self.writers = np.array([self.labels[m[0]] for m in self._members])
        self._nearest: np.ndarray | None = None

    def observe_embeddings(self, embeddings: np.ndarray) -> None:
        """Learn each writer's nearest writers from the embeddings (N, D) of all images, rows in ``labels``' order."""
        emb = _unit(self._checked_embeddings(embeddings, np.float64))
        sizes = np.array([len(m) for m in self._members])
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        means = np.add.reduceat(emb[np.concatenate(self._members)], offsets, axis=0) / sizes[:, None]
        self._nearest = nearest_rows(_unit(means), self.neighbours)

    @property
    def nearest_writers(self) -> np.ndarray | None:
        """Each sampled writer's candidate labels, nearest first (rows follow ``writers``); None before observing."""
        return None if self._nearest is None else self.writers[self._nearest]

    def state_dict(self) -> dict[str, np.ndarray]:
        """What the last observation taught (empty before one): a resumed run restores it with ``load_state_dict``."""
        return {} if self._nearest is None else {"nearest": self._nearest.copy()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if not state:
            self._nearest = None
            return
        nearest = np.asarray(state["nearest"], dtype=np.int64)
        expected = (len(self._members), self.neighbours)
        if nearest.shape != expected or nearest.min() < 0 or nearest.max() >= expected[0]:
            raise ValueError(f"state 'nearest' must be a {expected} table of writer indices, got "
                             f"shape {nearest.shape}; was it saved with other labels or neighbours?")
        self._nearest = nearest

    def _choose_writers(self, rng: np.random.Generator, left: np.ndarray) -> np.ndarray:
        if self._nearest is None or not self.groups:
            return super()._choose_writers(rng, left)
        g = self.group_size
        weights = left.astype(np.float64)
        batch = np.full(self.classes_per_batch, -1, dtype=np.int64)
        for j in range(self.groups):
            seed = gumbel_top(rng, weights, 1)
            candidates = self._nearest[seed[0]]
            weights[seed] = 0
            take = min(g - 1, int(np.count_nonzero(weights[candidates])))
            mates = candidates[gumbel_top(rng, weights[candidates], take)] if take else seed[:0]
            weights[mates] = 0
            batch[j * g:j * g + 1 + take] = np.concatenate([seed, mates])
        holes = np.flatnonzero(batch < 0)  # PK draws, including the places of mates a seed lacked
        if len(holes):
            batch[holes] = gumbel_top(rng, weights, len(holes))
        return batch


def nearest_rows(unit: np.ndarray, count: int, block: int = 1024) -> np.ndarray:
    """Each row's ``count`` most cosine-similar other rows of ``unit`` (unit-norm rows), most similar first.

    Computed ``block`` rows at a time, so memory stays O(block × rows); ties go to the lower index.
    Not :func:`hvkit.index.knn`: that searches in float32 with an engine-dependent order of ties,
    and every rank and every resumed run must draw the same batches from the same embeddings.
    """
    n = len(unit)
    out = np.empty((n, count), dtype=np.int64)
    for start in range(0, n, block):
        sims = unit[start:start + block] @ unit.T
        rows = np.arange(len(sims))
        sims[rows, start + rows] = -np.inf
        out[start:start + block] = np.argsort(-sims, axis=1, kind="stable")[:, :count]
    return out


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)
