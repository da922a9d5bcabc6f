"""A fixed set of triplets, drawn once and dealt out whole in shuffled batches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._sharding import ShardedBatchSampler


class FixedTripletSampler(ShardedBatchSampler):
    """Batches of whole triplets from one set of ``triplets`` drawn at construction.

    Each triplet ``(a, p, n)`` takes its anchor's writer uniformly among the writers with at
    least two images, ``a`` and ``p`` two distinct images of that writer, and ``n`` an image of a
    writer drawn uniformly among the others — pytorch-metric-learning's ``FixedSetOfTriplets``,
    whose purpose it shares: training and measuring a method when the only supervision is a set
    of relative judgements ("a is closer to p than to n"), not writer labels. (PML may pair an
    image with itself when its writer has one image; here such a writer is never an anchor.)
    The set depends on ``seed`` alone, so it is the same every epoch; each epoch shuffles its
    order (seeded by ``(seed, epoch)``) and deals it out as ``batch_size // 3`` triplets a
    batch, each laid out ``a, p, n`` in consecutive rows. Pair it with the ``packaged_triplets``
    miner so that the loss sees exactly those triplets, not every triplet the batch's labels allow.

    An epoch has ``⌈3·triplets / batch_size⌉`` batches, the last topped up from the epoch's start
    so every batch is full (``drop_last``: ``⌊3·triplets / batch_size⌋``). An image may appear in
    several triplets of one batch. Under W processes rank r yields the r-th contiguous 1/W of each
    batch, whole triplets, so ``batch_size`` must be a multiple of 3·W.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, triplets: int = 10_000, drop_last: bool = False) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        if batch_size % (3 * world_size):
            raise ValueError(f"batch_size {batch_size} must be a multiple of 3 × world_size = {3 * world_size}: "
                             "every rank's share is whole (anchor, positive, negative) triplets")
        if triplets < 1:
            raise ValueError(f"triplets must be at least 1, got {triplets}")
        if 3 * triplets < batch_size and drop_last:
            raise ValueError(f"{triplets} triplets fill no batch of {batch_size} rows; lower batch_size, "
                             "raise triplets or set drop_last: false")
        self.triplets = _draw_triplets(self.labels, triplets, np.random.default_rng(seed))
        per_batch = batch_size // 3
        self.batches = triplets // per_batch if drop_last else -(-triplets // per_batch)

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        per_batch = self.batch_size // 3
        order = np.resize(rng.permutation(len(self.triplets)), count * per_batch)
        return list(self.triplets[order].reshape(count, self.batch_size))


def _draw_triplets(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` (anchor, positive, negative) index triplets, shape (count, 3), as the class docstring says."""
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    if len(classes) < 2:
        raise ValueError(f"a triplet needs two writers, but the labels hold {len(classes)}")
    anchors = np.flatnonzero(sizes >= 2)
    if anchors.size == 0:
        raise ValueError("a triplet needs a writer with two images, but every writer has one")
    order = np.argsort(inverse, kind="stable")
    start = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    anchor_class = anchors[rng.integers(len(anchors), size=count)]
    other = rng.integers(len(classes) - 1, size=count)
    negative_class = other + (other >= anchor_class)
    first = rng.integers(sizes[anchor_class])
    second = rng.integers(sizes[anchor_class] - 1)
    second += second >= first
    negative = rng.integers(sizes[negative_class])
    return np.stack([order[start[anchor_class] + first], order[start[anchor_class] + second],
                     order[start[negative_class] + negative]], axis=1).astype(np.int64)
