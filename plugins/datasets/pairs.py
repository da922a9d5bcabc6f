"""The SSL-HV verification protocol (Chauhan et al. 2024): the labelled writers and the pairs.

Plain functions for the pipeline stages. SSL-HV trains its verifier on the first 10 % of the
training writers *in sorted name order* and, for each writer, on all same-writer combinations
of its samples, each matched with one different-writer pair that shares the first image and
draws the second uniformly from the other writers of the same subset; test pairs are built
the same way over all test writers. The pairs are therefore balanced.
"""

from __future__ import annotations

import numpy as np

from hvkit.api import Split


def labelled_writers(split: Split, fraction: float = 0.1) -> Split:
    """The images of the first ``int(fraction * W)`` of the split's writers, sorted by writer name.

    ``W`` counts the writers present in ``split``; the result keeps ``split.writers`` (labels
    still index it) and the images' order.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"labelled_writers: fraction={fraction} must be in (0, 1]")
    present = sorted((split.writers[c], c) for c in np.unique(split.labels))
    count = int(fraction * len(present))
    if count == 0:
        raise ValueError(f"labelled_writers: fraction={fraction} of {len(present)} writers selects none; "
                         "raise the fraction or use more writers")
    codes = [c for _, c in present[:count]]
    return split.subset(np.flatnonzero(np.isin(split.labels, codes)))


def sslhv_pairs(labels: np.ndarray, seed: int, max_pairs_per_writer: int | None = None,
                groups: np.ndarray | None = None,
                documents: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SSL-HV balanced pairs over ``labels``: returns ``(i, j, same)`` index arrays (int64).

    First every same-writer pair ``(a, b)``, ``a < b`` in index order within each writer (all
    combinations, or a seeded random ``max_pairs_per_writer`` of them), then for each of those
    one different-writer pair ``(a, k)`` with ``k`` drawn uniformly from the images of all other
    writers — with ``groups`` (each image's writer's group, (N,)) from the other writers of
    ``a``'s group only, so no pair tells writers apart by their group; the same-writer pairs of a
    writer alone in their group are then left out, having no such partner. With ``documents``
    (each image's document, (N,)) only same-writer pairs of two documents are kept, before any
    ``max_pairs_per_writer`` draw, so the pairs stay balanced. ``same`` is 1 for the first half and
    0 for the second. Deterministic by ``seed``.
    """
    labels = np.asarray(labels)
    if max_pairs_per_writer is not None and max_pairs_per_writer < 1:
        raise ValueError(f"sslhv_pairs: max_pairs_per_writer={max_pairs_per_writer} must be >= 1 or None")
    order = np.argsort(labels, kind="stable")
    writers, start, count = np.unique(labels[order], return_index=True, return_counts=True)
    if len(writers) < 2:
        raise ValueError(f"sslhv_pairs: need images of at least 2 writers, got {len(writers)}")
    rng = np.random.default_rng(seed)
    first, second = [], []
    if documents is not None and np.shape(documents) != labels.shape:
        raise ValueError(f"sslhv_pairs: documents must give one document per image, got {np.shape(documents)} for "
                         f"{labels.shape} labels")
    for s, c in zip(start, count):
        a, b = np.triu_indices(c, 1)
        if documents is not None:
            apart = documents[order[s + a]] != documents[order[s + b]]
            a, b = a[apart], b[apart]
        if max_pairs_per_writer is not None and len(a) > max_pairs_per_writer:
            keep = np.sort(rng.choice(len(a), max_pairs_per_writer, replace=False))
            a, b = a[keep], b[keep]
        first.append(order[s + a])
        second.append(order[s + b])
    i = np.concatenate(first).astype(np.int64)
    j = np.concatenate(second).astype(np.int64)
    if len(i) == 0:
        raise ValueError("sslhv_pairs: no writer has two images" + (" of two documents" if documents is not None
                                                                      else "") + ", so there are no same-writer pairs")
    if groups is None:
        k = _other_writers_image(order, labels, i, rng)
    else:
        i, j, k = _partners_in_group(labels, np.asarray(groups), i, j, rng)
    same = np.concatenate([np.ones(len(i), np.int64), np.zeros(len(i), np.int64)])
    return np.concatenate([i, i]), np.concatenate([j, k]).astype(np.int64), same


def _partners_in_group(labels: np.ndarray, groups: np.ndarray, first: np.ndarray, second: np.ndarray,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The same-writer pairs whose writer shares a group with another, and for each anchor one image
    drawn uniformly from the other writers of its group: ``(first, second, partner)``."""
    if groups.shape != labels.shape:
        raise ValueError(f"sslhv_pairs: groups must give one group per image, got {groups.shape} for "
                         f"{labels.shape} labels")
    pools = {}
    for group in np.unique(groups):
        pool = np.flatnonzero(groups == group)
        pool = pool[np.argsort(labels[pool], kind="stable")]
        if len(np.unique(labels[pool])) > 1:
            pools[group] = pool
    kept = np.isin(groups[first], list(pools))
    if not kept.any():
        raise ValueError("sslhv_pairs: no writer with two images shares a group with another writer, so there "
                         "are no different-writer partners within a group")
    first, second = first[kept], second[kept]
    partners = np.empty(len(first), np.int64)
    for group, pool in pools.items():
        mine = np.flatnonzero(groups[first] == group)
        partners[mine] = _other_writers_image(pool, labels, first[mine], rng)
    return first, second, partners


def _other_writers_image(pool: np.ndarray, labels: np.ndarray, anchors: np.ndarray,
                         rng: np.random.Generator) -> np.ndarray:
    """For each anchor, one image of ``pool`` (image indices sorted by label) drawn uniformly from the images
    of the writers other than the anchor's: one draw below the pool's size less the anchor writer's images,
    shifted past that writer's block."""
    writers, start, count = np.unique(labels[pool], return_index=True, return_counts=True)
    block = np.searchsorted(writers, labels[anchors])
    draw = rng.integers(0, len(pool) - count[block])
    return pool[np.where(draw < start[block], draw, draw + count[block])]
