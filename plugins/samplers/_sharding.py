"""Shared bookkeeping of the batch samplers: context checks, the epoch's seed and dealing batches to ranks.

An epoch is one *global* sequence of batches, drawn from a generator seeded with
``(seed, epoch)`` only, so every rank draws the same sequence; rank ``r`` of ``W`` yields
global batches ``r, r + W, r + 2W, …``, and every rank yields the same number of batches.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence

import numpy as np


class ShardedBatchSampler(ABC):
    """Base of hvkit's batch samplers: subclasses implement ``_global_batches(rng, count)``."""

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int, rank: int,
                 world_size: int) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.size == 0 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a non-empty 1-D sequence of int, got shape "
                             f"{labels.shape} of {labels.dtype}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank must satisfy 0 <= rank < world_size, got rank {rank} of "
                             f"world_size {world_size}")
        self.labels = labels.astype(np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches_per_rank = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``iter()`` yields."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_rank

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        batches = self._global_batches(rng, self.batches_per_rank * self.world_size)
        for batch in batches[self.rank::self.world_size]:
            yield batch.tolist()

    @abstractmethod
    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        """The epoch's first ``count`` global batches, drawn from ``rng`` alone."""
