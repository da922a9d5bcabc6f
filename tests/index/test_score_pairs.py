"""score_pairs equals a direct float64 computation, in any chunking."""

from __future__ import annotations

import numpy as np
import pytest

from hvkit.index import score_pairs


def direct(a: np.ndarray, b: np.ndarray, pairs: np.ndarray, metric: str) -> np.ndarray:
    a, b = a.astype(np.float64), b.astype(np.float64)
    if metric == "cosine":
        a, b = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (a, b))
    u, v = a[pairs[:, 0]], b[pairs[:, 1]]
    return -((u - v) ** 2).sum(1) if metric == "l2" else (u * v).sum(1)


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("engine, chunk_size", [("faiss", 65536), ("torch", 1), ("torch", 7), ("torch", 65536)])
def test_scores_equal_direct_computation(data, metric, engine, chunk_size):
    x, _ = data
    pairs = np.random.default_rng(0).integers(0, len(x), (1000, 2))
    got = score_pairs(x, pairs, metric=metric, engine=engine, chunk_size=chunk_size)
    assert got.dtype == np.float32 and got.shape == (1000,)
    np.testing.assert_allclose(got, direct(x, x, pairs, metric), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
def test_query_reference_pairs(data, engine):
    x, _ = data
    a, b = x[:30], x[30:]
    pairs = np.stack([np.arange(30), np.arange(30) * 7 % len(b)], axis=1)
    got = score_pairs(a, pairs, b, engine=engine)
    np.testing.assert_allclose(got, direct(a, b, pairs, "cosine"), rtol=1e-5, atol=1e-6)


def test_without_faiss_torch_does_the_work(data, no_faiss):
    x, _ = data
    pairs = np.array([[0, 1], [2, 3]])
    np.testing.assert_allclose(score_pairs(x, pairs), direct(x, x, pairs, "cosine"), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
def test_empty_pair_list(data, engine):
    x, _ = data
    assert score_pairs(x, np.zeros((0, 2), np.int64), engine=engine).shape == (0,)


@pytest.mark.parametrize("pairs, match", [
    (np.zeros((4, 3), np.int64), r"\(P, 2\)"),
    (np.zeros((4, 2), np.float32), "integer"),
    (np.array([[0, 300]]), r"pairs\[:, 1\]"),
    (np.array([[-1, 0]]), r"pairs\[:, 0\]"),
])
def test_invalid_pairs(data, pairs, match):
    x, _ = data
    with pytest.raises(ValueError, match=match):
        score_pairs(x, pairs)
