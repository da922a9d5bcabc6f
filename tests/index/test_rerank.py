"""k-reciprocal re-ranking against a hand-computed case and a literal float64 transcription of the paper."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hvkit.index.rerank import k_reciprocal_scores

from .conftest import clustered


def reference(x: np.ndarray, k1: int, k2: int, weight: float) -> np.ndarray:
    """Zhong et al. 2017, step by step over dense N × N matrices, one query at a time: 1 − d* for every pair."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    d = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    n = len(x)
    rank = np.argsort(d, axis=1, kind="stable")

    def reciprocal(p: int, k: int) -> np.ndarray:
        forward = rank[p, :k + 1]
        return np.array([g for g in forward if p in rank[g, :k + 1]])

    v = np.zeros((n, n))
    for p in range(n):
        members = reciprocal(p, k1)
        expanded = set(members)
        for q in members:
            candidate = reciprocal(q, int(round(k1 / 2)))
            if len(np.intersect1d(candidate, members)) > 2 / 3 * len(candidate):
                expanded |= set(candidate)
        cols = np.array(sorted(expanded))
        v[p, cols] = np.exp(-d[p, cols]) / np.exp(-d[p, cols]).sum()
    v = np.stack([v[rank[p, :k2]].mean(axis=0) for p in range(n)])
    jaccard = np.array([[1.0 - np.minimum(v[p], v[g]).sum() / np.maximum(v[p], v[g]).sum() for g in range(n)]
                        for p in range(n)])
    return 1.0 - (1.0 - weight) * jaccard - weight * d


def all_pairs(n: int) -> np.ndarray:
    i, j = np.triu_indices(n, 1)
    return np.stack([i, j], axis=1)


@pytest.mark.parametrize(("k1", "k2", "weight"), [(20, 6, 0.3), (6, 2, 0.0), (4, 1, 0.5), (10, 3, 1.0)])
def test_matches_the_papers_steps(k1: int, k2: int, weight: float) -> None:
    x, _ = clustered(n=120, dim=8, classes=10, noise=0.6)
    pairs = all_pairs(len(x))
    expected = reference(x.astype(np.float64), k1, k2, weight)[pairs[:, 0], pairs[:, 1]]
    np.testing.assert_allclose(k_reciprocal_scores(x, pairs, k1=k1, k2=k2, weight=weight, chunk_size=97),
                               expected, atol=1e-6)


def test_hand_computed_two_pairs_of_neighbours() -> None:
    """Unit vectors at 0°, 10°, 90°, 100°, k1 = 1: each is the other's only reciprocal neighbour.

    V_0 = (a, b, 0, 0) and V_1 = (b, a, 0, 0) with b/a = e = exp(−d01), so d_J(0, 1) = 1 − e;
    neighbourhoods across the two pairs share nothing, d_J = 1.
    """
    angles = np.radians([0.0, 10.0, 90.0, 100.0])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    weight = 0.25
    near = 2.0 - 2.0 * math.cos(math.radians(10.0))
    far = 2.0 - 2.0 * math.cos(math.radians(90.0))
    scores = k_reciprocal_scores(x, np.array([[0, 1], [2, 3], [0, 2], [1, 3]]), k1=1, k2=1, weight=weight)
    same = 1.0 - (1.0 - weight) * (1.0 - math.exp(-near)) - weight * near
    other = 1.0 - (1.0 - weight) - weight * far
    np.testing.assert_allclose(scores, [same, same, other, other], atol=1e-6)


def test_full_weight_is_the_cosine_and_the_order_of_the_set_does_not_matter() -> None:
    x, _ = clustered(n=80, dim=6, classes=8)
    pairs = all_pairs(len(x))[::7]
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    cosine = (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(axis=1)
    np.testing.assert_allclose(k_reciprocal_scores(x, pairs, weight=1.0), 2.0 * cosine - 1.0, atol=1e-6)
    order = np.random.default_rng(1).permutation(len(x))
    moved = np.argsort(order)
    np.testing.assert_allclose(k_reciprocal_scores(x[order], moved[pairs]), k_reciprocal_scores(x, pairs), atol=1e-9)


def test_neighbourhoods_lift_pairs_of_one_class() -> None:
    """On noisy clusters the re-ranked scores separate same-class pairs better than the cosine."""
    x, labels = clustered(n=300, dim=16, classes=30, noise=1.1, seed=3)
    pairs = all_pairs(len(x))
    same = labels[pairs[:, 0]] == labels[pairs[:, 1]]

    def auc(scores: np.ndarray) -> float:
        order = np.argsort(scores, kind="stable")
        ranks = np.empty(len(scores))
        ranks[order] = np.arange(1, len(scores) + 1)
        return (ranks[same].sum() - same.sum() * (same.sum() + 1) / 2) / (same.sum() * (~same).sum())

    plain = k_reciprocal_scores(x, pairs, weight=1.0)
    assert auc(k_reciprocal_scores(x, pairs)) > auc(plain) + 0.01


def test_a_set_smaller_than_k1_clips_it() -> None:
    x, _ = clustered(n=9, dim=4, classes=3)
    pairs = all_pairs(9)
    np.testing.assert_allclose(k_reciprocal_scores(x, pairs, k1=20, k2=6),
                               reference(x.astype(np.float64), 8, 6, 0.3)[pairs[:, 0], pairs[:, 1]], atol=1e-6)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"k1": 0}, "k1=0"), ({"k2": 0}, "k2=0"), ({"weight": 1.5}, "weight=1.5"),
])
def test_bad_settings(kwargs: dict, message: str) -> None:
    x, _ = clustered(n=10, dim=4)
    with pytest.raises(ValueError, match=message):
        k_reciprocal_scores(x, np.array([[0, 1]]), **kwargs)


def test_bad_sets_and_pairs() -> None:
    with pytest.raises(ValueError, match="at least 2 images"):
        k_reciprocal_scores(np.ones((1, 4), np.float32), np.array([[0, 0]]))
    x, _ = clustered(n=10, dim=4)
    with pytest.raises(ValueError, match="index the 10 rows"):
        k_reciprocal_scores(x, np.array([[0, 10]]))
