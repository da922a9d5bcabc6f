"""Shared bookkeeping of the batch samplers: context checks, the epoch's seed and slicing batches for ranks.

An epoch is one sequence of *global* batches of ``batch_size``, drawn from a generator
seeded with ``(seed, epoch)`` only, so every rank draws the same sequence; rank ``r`` of
``W`` yields the ``r``-th of ``W`` equal contiguous slices of every global batch. A step
of W processes therefore sees exactly the batch one process sees: ``batch_size`` is the
global batch, and changing the world size does not change the optimisation.
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
        if batch_size % world_size:
            raise ValueError(f"batch_size {batch_size} (the global batch) must be a multiple of "
                             f"world_size {world_size}")
        self.labels = labels.astype(np.int64)
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.batches = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose batches the next ``iter()`` yields."""
        if epoch < 0:
            raise ValueError(f"epoch must be non-negative, got {epoch}")
        self.epoch = epoch

    def _checked_embeddings(self, embeddings: np.ndarray, dtype: type) -> np.ndarray:
        """A model-aware sampler's observed embeddings as ``dtype``: finite, one row of D > 0 values per label."""
        emb = np.asarray(embeddings, dtype=dtype)
        if emb.ndim != 2 or emb.shape[0] != len(self.labels) or emb.shape[1] == 0:
            raise ValueError(f"embeddings must have shape ({len(self.labels)}, D), one row per label, "
                             f"got {emb.shape}")
        if not np.isfinite(emb).all():
            raise ValueError("embeddings hold NaN or inf values")
        return emb

    @property
    def local_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        return self.batches

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        start = self.rank * self.local_batch_size
        for batch in self._global_batches(rng, self.batches):
            yield batch[start:start + self.local_batch_size].tolist()

    @abstractmethod
    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        """The epoch's first ``count`` global batches, drawn from ``rng`` alone."""
