"""Hard-example sampling: each image drawn as often as a miner picks it in the model's current embedding."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import torch

from hvkit.api import Component

from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner

from ._sharding import ShardedBatchSampler
from .pk import gumbel_top


class TuplesToWeightsSampler(ShardedBatchSampler):
    """Batches drawn with probability proportional to how often a miner picks each image (PML's TuplesToWeightsSampler).

    The sampler declares ``needs_embeddings``: before every ``refresh_every``-th epoch the training
    stage passes the L2-normalised embeddings of all its images to :meth:`observe_embeddings`,
    which runs ``miner`` (default ``multi_similarity``, epsilon 0.1) on them (or on a random ``subset_size`` of them, drawn afresh at each
    observation) with their labels and counts each image's appearances ``c_i`` in the mined tuples
    (anchors and partners alike). An image's weight is ``c_i / max_j c_j``; images outside the
    subset, or never mined, weigh 0; when the miner returns no tuple every image of the subset
    weighs 1 — pytorch-metric-learning's ``convert_to_weights``. Each global batch of
    ``batch_size`` is then drawn in proportion to the weights: without repeats inside a batch
    (Gumbel top-k; if fewer images than a batch have weight, all of them, the rest uniformly among
    the others), or with ``replacement: true`` independently as PML's ``WeightedRandomSampler``.
    Labels play no part in the draw, so a batch's positives are whatever the weights give: pair
    it with a loss that tolerates batches without them, and expect fewer positives than ``pk``'s.

    Until embeddings are observed every image weighs 1 (plain random batches). An epoch holds
    ``batches_per_epoch`` batches (default ``ceil(subset_size or N / batch_size)``, PML's epoch
    of ``subset_size`` draws). Batches depend on ``(seed, epoch)`` and the weights last observed;
    the subset of an observation on ``(seed, the number of observations before it)``.
    """

    needs_embeddings: ClassVar[bool] = True

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, miner: Component["miner"] | None = None,
                 subset_size: int | None = None, replacement: bool = False,
                 batches_per_epoch: int | None = None, refresh_every: int = 1) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        n = len(self.labels)
        if not replacement and batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} examples; lower batch_size or set "
                             "replacement: true")
        if subset_size is not None and not 2 <= subset_size <= n:
            raise ValueError(f"subset_size must be between 2 and the {n} examples, got {subset_size}")
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        if refresh_every < 1:
            raise ValueError(f"refresh_every must be at least 1 (epochs), got {refresh_every}")
        if miner is not None and not callable(miner):
            raise ValueError(f"miner must be a built miner (a callable), got {miner!r}")
        self.miner = MultiSimilarityMiner() if miner is None else miner
        self.subset_size, self.replacement = subset_size, replacement
        self.refresh_every = refresh_every
        self.batches = batches_per_epoch or -(-(subset_size or n) // batch_size)
        self.weights = np.ones(n)
        self.observations = 0

    def observe_embeddings(self, embeddings: np.ndarray) -> None:
        """Weigh each image by its count in the miner's tuples on the embeddings (N, D), rows in ``labels``' order."""
        emb = self._checked_embeddings(embeddings, np.float32)
        n = len(self.labels)
        if self.subset_size is None:
            subset = np.arange(n)
        else:
            subset = np.sort(np.random.default_rng([self.seed, self.observations, 1]).choice(
                n, self.subset_size, replace=False))
        with torch.no_grad():
            tuples = self.miner(torch.from_numpy(emb[subset]), torch.from_numpy(self.labels[subset]))
        mined = torch.cat([torch.as_tensor(t).reshape(-1) for t in tuples]).numpy() if tuples else np.empty(0)
        counts = np.bincount(mined.astype(np.int64), minlength=len(subset)).astype(np.float64)
        weights = np.zeros(n)
        weights[subset] = counts / counts.max() if counts.any() else 1.0
        self.weights = weights
        self.observations += 1

    def state_dict(self) -> dict[str, np.ndarray]:
        """The weights last observed and the number of observations: a resumed run restores them with ``load_state_dict``."""
        return {"weights": self.weights.copy(), "observations": np.array(self.observations)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        weights = np.asarray(state["weights"], dtype=np.float64)
        if weights.shape != (len(self.labels),) or not (np.isfinite(weights).all() and (weights >= 0).all()
                                                         and weights.any()):
            raise ValueError(f"state 'weights' must be {len(self.labels)} non-negative finite weights, not all 0")
        self.weights, self.observations = weights, int(state["observations"])

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        if self.replacement:
            return list(rng.choice(len(self.labels), (count, self.batch_size), p=self.weights / self.weights.sum()))
        return [self._draw_distinct(rng) for _ in range(count)]

    def _draw_distinct(self, rng: np.random.Generator) -> np.ndarray:
        """One batch without repeats: by weight, then uniformly among the weightless once those run out."""
        weighted = np.flatnonzero(self.weights > 0)
        if len(weighted) >= self.batch_size:
            return weighted[gumbel_top(rng, self.weights[weighted], self.batch_size)]
        rest = np.flatnonzero(self.weights == 0)
        return np.concatenate([rng.permutation(weighted), rng.choice(rest, self.batch_size - len(weighted),
                                                                     replace=False)])
