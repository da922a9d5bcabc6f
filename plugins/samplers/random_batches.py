"""Plain shuffled batches without replacement, deterministic per epoch and sharded across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._sharding import ShardedBatchSampler


class RandomBatchSampler(ShardedBatchSampler):
    """Shuffled batches without replacement (labels ignored), deterministic and DDP-aware.

    Each epoch shuffles the N indices (seeded by ``(seed, epoch)`` only) and cuts the permutation
    into batches of ``batch_size`` (the global batch; rank r of W yields the r-th contiguous
    1/W of each). With ``drop_last`` the incomplete batch is dropped (``N // batch_size``
    batches); without it the permutation is continued from its start (as torch's
    DistributedSampler pads), so every batch is full and every index appears at least once.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        n = len(self.labels)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} examples; lower batch_size")
        self.batches = n // batch_size if drop_last else -(-n // batch_size)
        self.drop_last = drop_last

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        order = np.resize(rng.permutation(len(self.labels)), count * self.batch_size)
        return list(order.reshape(count, self.batch_size))
