"""The symmetric top-k kernel: exact self-retrieval against float64 brute force, any tiling and thread count."""

from __future__ import annotations

import numpy as np
import pytest

from hvkit.index import knn, symmetric, vector_index
from hvkit.index.symmetric import _rounds, symmetric_topk

from .conftest import clustered

pytestmark = pytest.mark.skipif(not symmetric.available(),
                                reason="kernel not built, or this CPU has neither AVX2 nor AVX-512F")


def reference_topk(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k largest float64 inner products with the other rows, best first (ties by id)."""
    sim = x.astype(np.float64) @ x.astype(np.float64).T
    np.fill_diagonal(sim, -np.inf)
    ids = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sim, ids, axis=1), ids


def unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = clustered(n, dim, classes=max(2, n // 40), seed=seed)[0]
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("isa", [pytest.param(isa, marks=pytest.mark.skipif(
    isa not in symmetric.available(), reason=f"this CPU has no {isa}")) for isa in symmetric.ISAS])
@pytest.mark.parametrize(("n", "k", "block_size", "threads"), [
    (700, 37, 128, 2),    # 6 blocks: diagonal and off-diagonal tiles, a short last block
    (700, 37, 1024, 1),   # one tile
    (333, 150, 64, 3),    # k larger than a block: lists fill across many tiles
    (9, 8, 2, 2),         # k = N - 1: every other row; an odd number of blocks
])
def test_equals_float64_brute_force(n, k, block_size, threads, isa):
    x = unit(n, 24, seed=n)
    scores, ids = symmetric_topk(x, k, block_size=block_size, threads=threads, isa=isa)
    want_scores, want_ids = reference_topk(x, k)
    assert scores.shape == ids.shape == (n, k) and ids.dtype == np.int64
    np.testing.assert_allclose(scores, want_scores, atol=1e-6)
    exact = x.astype(np.float64) @ x.astype(np.float64).T
    np.testing.assert_allclose(np.take_along_axis(exact, ids, axis=1), want_scores, atol=1e-6)
    separated = np.abs(np.diff(want_scores, axis=1)).min(axis=1) > 1e-5  # rows without near-ties
    assert separated.mean() > 0.5
    np.testing.assert_array_equal(ids[separated], want_ids[separated])
    assert not np.any(ids == np.arange(n)[:, None]), "a row must not retrieve itself"
    assert all(len(set(row)) == k for row in ids), "no neighbour twice"


def test_same_answer_for_every_tiling_and_thread_count():
    x = unit(500, 16, seed=1)
    first = symmetric_topk(x, 20, block_size=512, threads=1)
    for block_size, threads in ((100, 2), (33, 4)):
        again = symmetric_topk(x, 20, block_size=block_size, threads=threads)
        np.testing.assert_allclose(again[0], first[0], atol=1e-6)
        np.testing.assert_array_equal(again[1], first[1])


def test_knn_self_retrieval_uses_it_and_agrees_with_faiss(monkeypatch):
    calls = []

    def spy(*args, **kwargs):
        calls.append(args[1])
        return symmetric_topk(*args, **kwargs)

    monkeypatch.setattr(vector_index, "symmetric_topk", spy)
    x = clustered(400, 16, seed=2)[0]
    for metric in ("cosine", "ip"):
        ours = knn(x, 30, metric=metric)
        theirs = knn(x, 30, metric=metric, engine="faiss")
        np.testing.assert_allclose(ours[0], theirs[0], atol=1e-5)
        np.testing.assert_array_equal(ours[1], theirs[1])
    assert calls == [30, 30], "engine='auto' self-retrieval on the CPU goes through the kernel"
    knn(x, 5, metric="l2")
    knn(x[:50], 5, x, metric="cosine")
    assert calls == [30, 30], "l2 and query-vs-reference searches do not"


def test_bad_arguments():
    x = unit(10, 4, seed=3)
    for k in (0, 10):
        with pytest.raises(ValueError, match="between 1 and 9"):
            symmetric_topk(x, k)
    with pytest.raises(ValueError, match="isa='sse2'"):
        symmetric_topk(x, 3, isa="sse2")


@pytest.mark.parametrize("blocks", [1, 2, 5, 8])
def test_rounds_cover_every_pair_once_with_disjoint_blocks(blocks):
    rounds = _rounds(blocks)
    pairs = [pair for r in rounds for pair in r]
    assert sorted(pairs) == [(i, j) for i in range(blocks) for j in range(i, blocks)]
    for r in rounds:
        touched = [b for pair in r for b in set(pair)]
        assert len(touched) == len(set(touched)), f"round {r} shares a block"
