"""RocCounts against scikit-learn and hand-computed cases; streamed all-pairs AUC within its bound."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hvkit.evaluation import RocCounts
from hvkit.index import all_pairs_histogram, auc_tie_bound

from .reference import clustered, sklearn_eer, sklearn_tar_at_far


def random_scores(n: int, seed: int, decimals: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.3
    scores = rng.normal(size=n) + 1.2 * same
    return (np.round(scores, decimals) if decimals is not None else scores), same


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties
@pytest.mark.parametrize("seed", [0, 1])
def test_exact_counts_match_sklearn(seed, decimals):
    scores, same = random_scores(2000, seed, decimals)
    roc = RocCounts.from_scores(scores, same)
    assert roc.auc() == pytest.approx(roc_auc_score(same, scores), abs=1e-12)
    assert roc.auc_error_bound() == 0.0 or decimals is not None
    assert roc.eer() == pytest.approx(sklearn_eer(same, scores), abs=1e-12)
    for far in (1e-1, 1e-2, 1e-3):
        assert roc.tar_at_far(far) == pytest.approx(sklearn_tar_at_far(same, scores, far), abs=1e-12)


def test_hand_computed_case():
    # same: 0.9, 0.8, 0.6; different: 0.7, 0.4, 0.3. 8 of 9 (same, different) couples ordered right.
    roc = RocCounts.from_scores(np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3]), np.array([1, 1, 0, 1, 0, 0], bool))
    assert roc.auc() == pytest.approx(8 / 9)
    assert roc.eer() == pytest.approx(1 / 3)  # threshold 0.7: FAR 1/3, FRR 1/3
    assert roc.tar_at_far(0.0) == pytest.approx(2 / 3)
    assert roc.tar_at_far(0.5) == pytest.approx(1.0)
    threshold, accuracy = roc.best_threshold()
    assert accuracy == pytest.approx(5 / 6)
    assert threshold == pytest.approx(0.5)  # 5/6 both at 0.5 (reject 0.3, 0.4) and at 0.75; the lower wins


def test_ties_count_half():
    roc = RocCounts.from_scores(np.array([0.5, 0.5]), np.array([True, False]))
    assert roc.auc() == 0.5
    assert roc.eer() == pytest.approx(0.5)


def test_best_threshold_can_accept_everything_or_nothing():
    everything = RocCounts.from_scores(np.array([0.1, 0.2, 0.3]), np.array([False, True, True]))
    assert everything.best_threshold() == (pytest.approx(0.15), 1.0)
    nothing = RocCounts.from_scores(np.array([0.1, 0.5, 0.9]), np.array([True, False, False]))
    threshold, accuracy = nothing.best_threshold()
    assert accuracy == pytest.approx(2 / 3) and 0.9 < threshold < 0.9 + 1e-12
    tie = RocCounts.from_scores(np.array([0.1, 0.9]), np.array([True, False]))
    assert tie.best_threshold() == (0.1, 0.5)  # accept all ties with accept none: the first wins


@pytest.mark.parametrize("bins", [1 << 16, 1 << 18])
def test_streamed_all_pairs_auc_and_eer_match_sklearn_on_exact_scores(bins):
    x, labels = clustered(n=1500, dim=24, classes=40, noise=1.5, seed=7)
    roc = RocCounts.from_histogram(all_pairs_histogram(x, labels, bins=bins, block_size=512))
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    scores, same = np.sum(unit[i] * unit[j], axis=1), labels[i] == labels[j]
    exact = roc_auc_score(same, scores)
    assert roc.auc_error_bound() < 1e-4
    assert abs(roc.auc() - exact) <= roc.auc_error_bound() + 1e-9
    assert abs(roc.auc() - exact) < 1e-4
    assert abs(roc.eer() - sklearn_eer(same, scores)) < 1e-3


def test_auc_error_bound_hand_computed():
    # level 0: 1 same, 2 different; level 1: 3 same, 1 different. P = 4, N = 3.
    # Tied couples: 1·2 + 3·1 = 5, each off by at most ½: bound 5 / (2 · 12).
    roc = RocCounts(np.array([0.0, 1.0]), np.array([1.0, 3.0]), np.array([2.0, 1.0]))
    assert roc.auc_error_bound() == pytest.approx(5 / 24)
    assert auc_tie_bound(roc.same, roc.diff) == roc.auc_error_bound()


def test_auc_error_bound_holds_for_coarse_bins():
    x, labels = clustered(n=500, dim=8, classes=10, noise=1.5, seed=8)
    roc = RocCounts.from_histogram(all_pairs_histogram(x, labels, bins=16))
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    exact = roc_auc_score(labels[i] == labels[j], np.sum(unit[i] * unit[j], axis=1))
    assert 1e-3 < roc.auc_error_bound()  # coarse: a real error budget
    assert abs(roc.auc() - exact) <= roc.auc_error_bound()


def test_errors():
    with pytest.raises(ValueError, match="both same and different"):
        RocCounts.from_scores(np.array([0.1, 0.2]), np.array([True, True])).auc()
    with pytest.raises(ValueError, match="equal length"):
        RocCounts.from_scores(np.array([0.1, 0.2]), np.array([True]))
    with pytest.raises(ValueError, match="NaN"):
        RocCounts.from_scores(np.array([0.1, np.nan]), np.array([True, False]))
