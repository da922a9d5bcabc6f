"""all_pairs_histogram counts every unordered pair once, in the right bin, in any blocking."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from hvkit.evaluation import RocCounts
from hvkit.index import all_pairs as all_pairs_module
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


def brute_force_roc(x: np.ndarray, labels: np.ndarray) -> tuple[float, float, np.ndarray]:
    """Float64 AUC (sklearn over every pair), EER (exact levels) and the scores."""
    scores, _, same = exact_bins(x, labels, 2)
    return roc_auc_score(same, scores), RocCounts.from_scores(scores, same).eer(), scores


def counted_passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[float, float]]:
    """The (low, high) of every counting pass all_pairs_histogram makes from now on."""
    passes, count = [], all_pairs_module._count

    def spy(unit, bounds, low, high, *args):
        passes.append((low, high))
        return count(unit, bounds, low, high, *args)

    monkeypatch.setattr(all_pairs_module, "_count", spy)
    return passes


@pytest.mark.parametrize("seed", [0, 1])
def test_common_component_refines_the_range_until_the_auc_is_exact(seed, monkeypatch):
    x, labels = clustered(n=300, dim=12, classes=7, seed=seed)
    x = x + np.float32(70.0)  # one dominant direction: every cosine in [0.999, 1]
    auc, eer, scores = brute_force_roc(x, labels)
    assert 0.999 < scores.min() and scores.max() < 1
    fixed = RocCounts.from_histogram(all_pairs_histogram(x, labels, tolerance=np.inf))
    assert fixed.auc_error_bound() > 0.01  # a handful of [-1, 1] bins
    passes = counted_passes(monkeypatch)
    hist = all_pairs_histogram(x, labels)
    roc = RocCounts.from_histogram(hist)
    assert 2 <= len(passes) <= 3 and passes[0] == (-1.0, 1.0)
    assert (hist.low, hist.high) == passes[-1]
    assert hist.low - 1e-6 <= scores.min() and scores.max() <= hist.high + 1e-6  # up to float32 rounding
    assert hist.high - hist.low < 2e-3
    sizes = np.bincount(labels)
    assert hist.same.sum() == np.sum(sizes * (sizes - 1) // 2)
    assert hist.same.sum() + hist.diff.sum() == len(x) * (len(x) - 1) // 2
    assert roc.auc_error_bound() < 1e-3  # the ties of the float32 cosines: ~1e-4
    assert abs(roc.auc() - auc) <= roc.auc_error_bound()
    crossing = max(hist.same.max() / roc.positives, hist.diff.max() / roc.negatives)
    assert abs(roc.eer() - eer) <= crossing
    assert abs(fixed.auc() - auc) > 10 * abs(roc.auc() - auc)


def test_identical_embeddings_stop_after_one_refinement(monkeypatch):
    x = np.tile(np.float32([[3.0, -1.0, 2.0]]), (20, 1))
    labels = np.arange(20) % 4
    passes = counted_passes(monkeypatch)
    hist = all_pairs_histogram(x, labels)
    assert len(passes) == 2  # everything in the last bin of [-1, 1], then bins narrower than float32's ε
    assert hist.low == 1 - 2 / 2 ** 16 and hist.high == 1
    roc = RocCounts.from_histogram(hist)
    assert roc.positives == 4 * 10 and roc.negatives == 190 - 40
    assert roc.auc() == 0.5 and roc.auc_error_bound() == 0.5  # every couple tied, as in the exact scores
    assert roc.eer() == pytest.approx(0.5)


def test_ordinary_embeddings_take_one_pass_over_minus_one_to_one(monkeypatch):
    x, labels = clustered(n=300, dim=10, classes=7, seed=4)
    passes = counted_passes(monkeypatch)
    hist = all_pairs_histogram(x, labels)
    assert passes == [(-1.0, 1.0)] and (hist.low, hist.high) == (-1.0, 1.0)
    single = all_pairs_histogram(x, labels, tolerance=np.inf)
    np.testing.assert_array_equal(hist.same, single.same)
    np.testing.assert_array_equal(hist.diff, single.diff)
    scores, index, same = exact_bins(x, labels, 1 << 16)
    position = (scores + 1) * 2 ** 15  # float32 rounding moves only scores within ~1e-7 of an edge
    near_edge = np.abs(position - np.round(position)) < 1e-2
    assert np.abs(hist.same - np.bincount(index[same], minlength=1 << 16)).sum() <= 2 * near_edge[same].sum()
    assert np.abs(hist.diff - np.bincount(index[~same], minlength=1 << 16)).sum() <= 2 * near_edge[~same].sum()


def dyadic_embeddings() -> tuple[np.ndarray, np.ndarray]:
    """±1 rows of dimension 16 whose cosines 1 - (differing signs) / 8 are exact in float32: 1, 0.875, …, 0.5."""
    flips = np.array([0, 0, 1, 2, 3, 4])
    x = np.where(np.arange(16)[None, :] < flips[:, None], -1.0, 1.0).astype(np.float32)
    return x, np.array([0, 1, 0, 1, 0, 1])


def test_refined_bins_put_scores_at_low_high_and_edges_in_the_right_bin():
    x, labels = dyadic_embeddings()
    bins = 4  # [-1, 1]: every cosine (0.5 is an edge) in the last bin, then [0.5, 1] in bins of 0.125
    hist = all_pairs_histogram(x, labels, bins=bins)
    assert (hist.low, hist.high) == (0.5, 1.0)
    expected = {True: [0] * bins, False: [0] * bins}
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            cosine = 1 - Fraction(int(np.sum(x[i] != x[j])), 8)  # 0.5 at low, 0.625 … 0.875 at edges, 1 at high
            expected[bool(labels[i] == labels[j])][min(int((cosine - Fraction(1, 2)) * 8), bins - 1)] += 1
    np.testing.assert_array_equal(hist.same, expected[True])
    np.testing.assert_array_equal(hist.diff, expected[False])
    np.testing.assert_array_equal(hist.same + hist.diff, [2, 3, 4, 5 + 1])


def test_scores_outside_the_counted_range_go_to_the_end_bins():
    x, _ = dyadic_embeddings()
    unit = x / np.float32(4)
    bounds = np.array([0, 3, 6])  # labels 0, 0, 0, 1, 1, 1
    same, total = all_pairs_module._count(unit, bounds, 0.6, 0.9, 3, 1024, "cpu")  # bins of 0.1 from 0.6 to 0.9
    # cosines 0.5 (2 pairs, below the range), 0.625 (3), 0.75 (4), 0.875 (5) and 1 (1, above)
    np.testing.assert_array_equal(total, [2 + 3, 4, 5 + 1])
    # same pairs: rows 0-2 flip 0, 0, 1 signs (cosines 1, 0.875, 0.875), rows 3-5 flip 2, 3, 4 (0.875, 0.75, 0.875)
    np.testing.assert_array_equal(same, [0, 1, 4 + 1])


def test_tolerance_must_not_be_negative():
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="tolerance"):
        all_pairs_histogram(x, np.zeros(4), tolerance=-1e-4)
