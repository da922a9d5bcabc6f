"""Hierarchical sampling: each batch from a few writer groups, several writers of each (PML's HierarchicalSampler)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from ._sharding import ShardedBatchSampler


class HierarchicalSampler(ShardedBatchSampler):
    """Batches drawn from ``groups_per_batch`` writer groups at a time, several writers of each group.

    ``groups`` (given by hvkit from the data's ``Split.groups``) is each image's writer's group,
    e.g. an Omniglot drawer's alphabet. Every global batch takes ``groups_per_batch`` groups and
    an equal share of the batch from each: ``P = batch_size / groups_per_batch / samples_per_class``
    distinct writers of that group drawn at random, ``K = samples_per_class`` images of each
    (drawn again when a writer has fewer), writer after writer. So every writer in a batch meets
    other writers of its own group, the negatives a group-blind batch seldom holds. An epoch
    walks every combination of ``groups_per_batch`` of the groups that hold at least P writers,
    ``batches_per_combination`` batches each, in shuffled order; ``batches_per_epoch`` cuts it
    short or repeats it (Ge et al. 2018's hierarchical triplet batches; pytorch-metric-learning's
    ``HierarchicalSampler``, whose ``super_classes_per_batch`` and ``batches_per_super_tuple``
    these are). Unlike PML's, every batch is full — groups with fewer than P writers are left out
    — and whole writers stay together, so each of W ranks gets whole writers: ``batch_size`` must
    be a multiple of ``groups_per_batch · K · W``. Batches depend on ``(seed, epoch)`` only.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, groups: Sequence[int] | None = None, samples_per_class: int = 4,
                 groups_per_batch: int = 2, batches_per_combination: int = 4,
                 batches_per_epoch: int | None = None) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        if groups is None:
            raise ValueError("hierarchical needs writer groups, and the data names none (image_folder takes "
                             "them from a pattern's named group 'group')")
        groups = np.asarray(groups)
        if groups.shape != self.labels.shape:
            raise ValueError(f"groups must give one group per label, got {groups.shape} for {self.labels.shape}")
        k, g = samples_per_class, groups_per_batch
        if k < 1 or g < 1 or batches_per_combination < 1:
            raise ValueError(f"samples_per_class={k}, groups_per_batch={g} and batches_per_combination="
                             f"{batches_per_combination} must each be at least 1")
        if batch_size % (g * k * world_size):
            raise ValueError(f"batch_size {batch_size} must be a multiple of groups_per_batch x samples_per_class "
                             f"x world_size = {g * k * world_size}")
        self.samples_per_class, self.groups_per_batch = k, g
        self.writers_per_group = batch_size // (g * k)
        group_codes = np.unique(groups, return_inverse=True)[1].reshape(-1)
        _, first, writer_of = np.unique(self.labels, return_index=True, return_inverse=True)
        members = np.split(np.argsort(writer_of, kind="stable"), np.cumsum(np.bincount(writer_of))[:-1])
        group_of_writer = group_codes[first]
        if np.any(group_of_writer[writer_of] != group_codes):
            raise ValueError("a writer has images in two groups; a writer's group must be one")
        self._groups: list[list[np.ndarray]] = []
        for group in range(group_codes.max() + 1):
            writers = [members[w] for w in np.flatnonzero(group_of_writer == group)]
            if len(writers) >= self.writers_per_group:
                self._groups.append(writers)
        if len(self._groups) < g:
            raise ValueError(f"a batch takes {g} groups of {self.writers_per_group} writers each, but "
                             f"{len(self._groups)} groups hold that many; lower batch_size or groups_per_batch")
        self._combinations = list(itertools.combinations(range(len(self._groups)), g))
        self.batches_per_combination = batches_per_combination
        natural = len(self._combinations) * batches_per_combination
        if batches_per_epoch is not None and batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        self.batches = natural if batches_per_epoch is None else batches_per_epoch

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        rounds = -(-count // (len(self._combinations) * self.batches_per_combination))
        plan = np.concatenate([rng.permutation(np.repeat(np.arange(len(self._combinations)),
                                                         self.batches_per_combination)) for _ in range(rounds)])
        batches = []
        for combination in plan[:count]:
            chunks = []
            for group in self._combinations[combination]:
                writers = self._groups[group]
                for w in rng.choice(len(writers), self.writers_per_group, replace=False):
                    images = writers[w]
                    chunks.append(rng.choice(images, self.samples_per_class,
                                             replace=len(images) < self.samples_per_class))
            batches.append(np.concatenate([chunks[c] for c in rng.permutation(len(chunks))]))
        return batches
