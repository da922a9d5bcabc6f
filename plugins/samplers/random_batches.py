"""Plain shuffled batches without replacement, deterministic per epoch and sharded across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ._sharding import ShardedBatchSampler


class RandomBatchSampler(ShardedBatchSampler):
    """Shuffled batches without replacement (labels ignored), deterministic and DDP-aware.

    Each epoch shuffles the N indices (seeded by ``(seed, epoch)`` only) and cuts the permutation
    into batches of ``batch_size``; rank r of W yields global batches r, r + W, …. With
    ``drop_last`` the incomplete batch and the batches past the last multiple of W are dropped:
    each rank yields ``N // batch_size // W`` batches and the union over ranks is the
    single-process sequence cut to that many batches times W. Without it, the permutation is
    continued from its start (as torch's DistributedSampler pads) so that every rank yields
    ``ceil(N / (batch_size * W))`` full batches and every index appears at least once an epoch.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, drop_last: bool = False) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        n = len(self.labels)
        if batch_size > n:
            raise ValueError(f"batch_size {batch_size} exceeds the {n} examples; lower batch_size")
        if drop_last:
            self.batches_per_rank = n // batch_size // world_size
            if self.batches_per_rank == 0:
                raise ValueError(f"{n // batch_size} full batches cannot be shared by "
                                 f"{world_size} ranks; set drop_last=False or lower batch_size")
        else:
            self.batches_per_rank = -(-n // (batch_size * world_size))
        self.drop_last = drop_last

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        order = np.resize(rng.permutation(len(self.labels)), count * self.batch_size)
        return list(order.reshape(count, self.batch_size))
