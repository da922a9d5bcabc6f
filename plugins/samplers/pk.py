"""PK sampling: P writers x K images per batch, deterministic per epoch and sharded across ranks."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Literal

import numpy as np

from ._sharding import ShardedBatchSampler


class PKSampler(ShardedBatchSampler):
    """Class-balanced batches of P writers x K images (PK sampling), deterministic and DDP-aware.

    Each batch holds ``P = batch_size // samples_per_class`` distinct writers with
    ``K = samples_per_class`` images each, writer by writer (Hermans et al. 2017, "In Defense of
    the Triplet Loss"). Every writer's images are shuffled and cut into chunks of K, a remainder
    waiting for the writer's next round; each batch draws P distinct writers with probability
    proportional to the chunks they have left (Gumbel top-P), so an epoch of the default length
    shows each image about once. When fewer than P writers have chunks left, every exhausted
    writer starts a new round. A writer with fewer than K images gives one chunk a round, all its
    images topped up by drawing them again (``small_classes="replace"``), or is left out
    (``"skip"``: warned about and listed in ``skipped_classes``).

    With ``across_documents`` (needs the data's ``documents``, each image's source document: a
    CEDAR letter copy, an IAM form), a writer's round deals its documents' images in turn — one
    from each document, in a shuffled order, then the next from each — so a chunk of K spans
    min(K, documents) of the writer's documents and the positives of a batch come from different
    sittings, pens and papers wherever the writer has them.

    ``batches_per_epoch`` counts an epoch's batches (default ``chunks per round // P``, about
    ``len(labels) // batch_size``). ``batch_size`` is the global batch: under W processes each
    rank yields a contiguous 1/W of every batch — whole writers, so ``batch_size`` must be a
    multiple of K·W — and the union of the ranks' slices is the single-process batch.
    Batches depend on ``(seed, epoch)`` only.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0, rank: int = 0,
                 world_size: int = 1, samples_per_class: int = 4,
                 small_classes: Literal["replace", "skip"] = "replace",
                 batches_per_epoch: int | None = None, across_documents: bool = False,
                 documents: Sequence[int] | None = None) -> None:
        super().__init__(labels, batch_size, seed, rank, world_size)
        k = samples_per_class
        if across_documents and documents is None:
            raise ValueError("across_documents needs each image's document, and the data names none "
                             "(Split.documents: cedar_and, iam and image_folder with a 'document' group give them)")
        if documents is not None and len(documents) != len(self.labels):
            raise ValueError(f"documents holds {len(documents)} entries for {len(self.labels)} labels")
        self._documents = np.asarray(documents, dtype=np.int64) if across_documents else None
        if k < 1:
            raise ValueError(f"samples_per_class must be at least 1, got {k}")
        if batch_size % k:
            raise ValueError(f"batch_size {batch_size} must be a multiple of samples_per_class {k}")
        if batch_size // k < 2:
            raise ValueError(f"batch_size {batch_size} holds a single writer of {k} images; "
                             f"set batch_size to at least {2 * k}")
        if small_classes not in ("replace", "skip"):
            raise ValueError(f"small_classes must be 'replace' or 'skip', got {small_classes!r}")
        self.samples_per_class = k
        self.classes_per_batch = batch_size // k

        classes, inverse, counts = np.unique(self.labels, return_inverse=True, return_counts=True)
        members = np.split(np.argsort(inverse, kind="stable"), np.cumsum(counts)[:-1])
        keep = counts >= k if small_classes == "skip" else np.ones(len(classes), dtype=bool)
        self.skipped_classes: list[int] = classes[~keep].tolist()
        if self.skipped_classes:
            warnings.warn(f"{type(self).__name__} skips {len(self.skipped_classes)} writers with fewer than "
                          f"{k} images (small_classes='skip'): labels {self.skipped_classes[:10]}"
                          f"{' …' if len(self.skipped_classes) > 10 else ''}", stacklevel=2)
        self._members = [m for m, kept in zip(members, keep) if kept]
        if len(self._members) < self.classes_per_batch:
            raise ValueError(f"a batch needs {self.classes_per_batch} distinct writers but only "
                             f"{len(self._members)} can be sampled; lower batch_size or "
                             f"samples_per_class, or use small_classes='replace'")

        if (batch_size // world_size) % k:
            raise ValueError(f"each of the {world_size} ranks gets {batch_size // world_size} images of a "
                             f"batch, not a multiple of samples_per_class {k}; make batch_size a multiple "
                             f"of {k * world_size}")
        if batches_per_epoch is None:
            chunks = int(np.maximum(counts[keep] // k, 1).sum())
            self.batches = max(1, chunks // self.classes_per_batch)
        elif batches_per_epoch < 1:
            raise ValueError(f"batches_per_epoch must be at least 1, got {batches_per_epoch}")
        else:
            self.batches = batches_per_epoch

    def _global_batches(self, rng: np.random.Generator, count: int) -> list[np.ndarray]:
        k, p, n_classes = self.samples_per_class, self.classes_per_batch, len(self._members)
        queues: list[np.ndarray] = [np.empty((0, k), dtype=np.int64)] * n_classes
        left = np.zeros(n_classes, dtype=np.int64)

        def new_round(c: int) -> None:
            images = rng.permutation(self._members[c])
            if self._documents is not None:
                images = dealt_by_document(images, self._documents[images], rng)
            if images.size < k:
                queues[c] = np.concatenate([images, rng.choice(images, k - images.size)])[None]
            else:
                queues[c] = images[: images.size // k * k].reshape(-1, k)
            left[c] = len(queues[c])

        for c in range(n_classes):
            new_round(c)
        batches = []
        for _ in range(count):
            if np.count_nonzero(left) < p:
                for c in np.flatnonzero(left == 0):
                    new_round(c)
            chosen = self._choose_writers(rng, left)
            left[chosen] -= 1
            batches.append(np.concatenate([queues[c][left[c]] for c in chosen]))
        return batches

    def _choose_writers(self, rng: np.random.Generator, left: np.ndarray) -> np.ndarray:
        """A batch's P distinct writers (indices into the sampled writers), in batch order.

        ``left`` counts each writer's chunks left in its round; at least P writers have one.
        """
        return gumbel_top(rng, left, self.classes_per_batch)


def dealt_by_document(images: np.ndarray, documents: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``images`` (in their given order within each document) dealt round by round over their ``documents``,
    taken in a random order: the first image of each document, then the second of each, and so on."""
    _, code = np.unique(documents, return_inverse=True)
    rank_in_document = np.zeros(len(images), dtype=np.int64)
    for d in range(code.max() + 1):
        mine = code == d
        rank_in_document[mine] = np.arange(np.count_nonzero(mine))
    turn = rng.permutation(code.max() + 1)[code]
    return images[np.lexsort((turn, rank_in_document))]


def gumbel_top(rng: np.random.Generator, weights: np.ndarray, k: int) -> np.ndarray:
    """``k`` distinct indices drawn without replacement with probability proportional to ``weights``.

    The Gumbel top-k trick: the k largest ``log w_i + G_i``, G_i standard Gumbel; a zero weight is
    never drawn, so ``weights`` must hold at least k positive entries.
    """
    n = len(weights)
    with np.errstate(divide="ignore"):
        keys = np.log(weights) + rng.gumbel(size=n)
    return np.argpartition(keys, n - k)[n - k:]
