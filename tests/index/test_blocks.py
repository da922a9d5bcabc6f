"""score_blocks visits every pair exactly once per its mode; blocked top-k equals one block."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvkit.index import blocked_topk, score_blocks


def assemble(query, reference=None, upper_triangle=False, block_size=7, metric="cosine"):
    """The full score matrix rebuilt from the blocks, and how often each entry was visited."""
    nr = len(query) if reference is None else len(reference)
    full = np.full((len(query), nr), np.nan)
    visits = np.zeros((len(query), nr), int)

    def keep(scores: torch.Tensor, q0: int, r0: int) -> None:
        a, b = scores.shape
        full[q0:q0 + a, r0:r0 + b] = scores.numpy()
        visits[q0:q0 + a, r0:r0 + b] += 1

    score_blocks(query, keep, reference, metric=metric, block_size=block_size, upper_triangle=upper_triangle)
    return full, visits


@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
def test_blocks_rebuild_the_full_matrix(data, metric):
    x, _ = data
    q, r = x[:50].astype(np.float64), x[50:120].astype(np.float64)
    full, visits = assemble(x[:50], x[50:120], metric=metric)
    assert np.all(visits == 1)
    if metric == "cosine":
        q, r = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (q, r))
    expected = -((q[:, None] - r[None]) ** 2).sum(-1) if metric == "l2" else q @ r.T
    np.testing.assert_allclose(full, expected, rtol=1e-5, atol=1e-4)


def test_upper_triangle_visits_every_unordered_pair_once(data):
    x, _ = data
    full, visits = assemble(x[:45], upper_triangle=True, block_size=8)
    i, j = np.triu_indices(45, 1)
    assert np.all(visits[i, j] == 1)
    assert np.all(visits[j, i][i // 8 != j // 8] == 0), "no block below the diagonal"
    whole, _ = assemble(x[:45], block_size=1000)
    np.testing.assert_allclose(full[i, j], whole[i, j], rtol=1e-6, atol=1e-6)


def test_parts_share_the_blocks_exactly(data):
    x, _ = data
    visits = np.zeros((60, 60), int)

    def keep(scores: torch.Tensor, q0: int, r0: int) -> None:
        visits[q0:q0 + scores.shape[0], r0:r0 + scores.shape[1]] += 1

    for i in range(3):
        score_blocks(x[:60], keep, block_size=16, upper_triangle=True, part=(i, 3))
    _, whole = assemble(x[:60], upper_triangle=True, block_size=16)
    np.testing.assert_array_equal(visits, whole)
    with pytest.raises(ValueError, match="part"):
        score_blocks(x[:10], keep, part=(3, 3))


def test_score_blocks_errors(data):
    x, _ = data
    with pytest.raises(ValueError, match="block_size"):
        score_blocks(x, lambda *a: None, block_size=0)
    with pytest.raises(ValueError, match="upper_triangle"):
        score_blocks(x[:10], lambda *a: None, x[:11], upper_triangle=True)
    with pytest.raises(ValueError, match="dimension"):
        score_blocks(x[:10], lambda *a: None, x[:10, :3])


@pytest.mark.parametrize("block_size", [1, 5, 64])
def test_blocked_topk_equals_one_block(data, block_size):
    x, _ = data
    one = blocked_topk(x[:40], 12, x, block_size=10_000)
    blocked = blocked_topk(x[:40], 12, x, block_size=block_size)
    np.testing.assert_array_equal(one[1], blocked[1])
    np.testing.assert_allclose(one[0], blocked[0], rtol=1e-6, atol=1e-6)
