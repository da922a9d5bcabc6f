"""all_pairs_histogram counts every unordered pair once, in the right bin, in any blocking."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvkit.index import all_pairs_histogram

from .conftest import clustered


def exact_bins(x: np.ndarray, labels: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float64 cosine of every pair i < j, its bin, and whether the labels agree."""
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    scores = np.sum(unit[i] * unit[j], axis=1)
    return scores, np.minimum(np.floor((scores + 1) * bins / 2).astype(int), bins - 1), labels[i] == labels[j]


@pytest.mark.parametrize("block_size", [16, 100, 4096])
def test_counts_match_exact_binning(block_size):
    x, labels = clustered(n=400, dim=12, classes=9, seed=2)
    bins = 256
    hist = all_pairs_histogram(x, labels, bins=bins, block_size=block_size)
    scores, index, same = exact_bins(x, labels, bins)
    assert hist.same.sum() == same.sum() and hist.diff.sum() == (~same).sum()
    expected_same = np.bincount(index[same], minlength=bins)
    expected_diff = np.bincount(index[~same], minlength=bins)
    # float32 products may put a score lying within 1e-6 of an edge into the neighbouring bin
    near_edge = np.abs((scores + 1) * bins / 2 - np.round((scores + 1) * bins / 2)) < 1e-3
    assert np.abs(hist.same - expected_same).sum() <= 2 * near_edge[same].sum()
    assert np.abs(hist.diff - expected_diff).sum() <= 2 * near_edge[~same].sum()
    assert np.cumsum(hist.same)[-1] == same.sum()


def test_blocked_equals_unblocked_and_input_order_does_not_matter():
    x, labels = clustered(n=300, dim=10, classes=7, seed=4)
    one = all_pairs_histogram(x, labels, block_size=10_000)
    blocked = all_pairs_histogram(x, labels, block_size=37)
    perm = np.random.default_rng(0).permutation(len(x))
    shuffled = all_pairs_histogram(x[perm], labels[perm], block_size=37)
    for other in (blocked, shuffled):  # equal up to float32 rounding moving a score over a bin edge
        for a, b in ((one.same, other.same), (one.diff, other.diff)):
            assert a.sum() == b.sum()
            assert np.abs(np.cumsum(a) - np.cumsum(b)).max() <= 3


def test_bins_cover_minus_one_to_one_with_the_extremes_inside():
    x = np.array([[1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], np.float32)
    hist = all_pairs_histogram(x, np.array([0, 0, 1]), bins=4)
    np.testing.assert_array_equal(hist.same, [0, 0, 0, 1])  # cosine 1 -> last bin
    np.testing.assert_array_equal(hist.diff, [2, 0, 0, 0])  # cosine -1 -> first bin
    np.testing.assert_allclose(hist.edges, [-1, -0.5, 0, 0.5, 1])


def test_errors():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="labels"):
        all_pairs_histogram(x, np.zeros(3))
    with pytest.raises(ValueError, match="bins"):
        all_pairs_histogram(x, np.zeros(4), bins=1)
    x[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        all_pairs_histogram(x, np.zeros(4))


def test_threads_share_the_blocks_and_the_thread_count_is_restored():
    x, labels = clustered(n=300, dim=10, classes=7, seed=5)
    before = torch.get_num_threads()
    torch.set_num_threads(3)
    try:
        shared = all_pairs_histogram(x, labels, block_size=40)
        assert torch.get_num_threads() == 3
        torch.set_num_threads(1)
        alone = all_pairs_histogram(x, labels, block_size=40)
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(shared.same, alone.same)
    np.testing.assert_array_equal(shared.diff, alone.diff)
