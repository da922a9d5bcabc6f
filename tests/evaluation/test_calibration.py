"""Scores to likelihood ratios (one system's or several fused) and Cllr: against scikit-learn, hand-computed float64
cases, and their invariances."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from hvkit.evaluation import (Calibration, LinearFusion, cllr, cosine_fusion_space, fit_calibration, fit_fusion,
                              mean_fusion, min_cllr)
from hvkit.evaluation.calibration import cllr_terms, min_cllr_of_counts, pav_log_lr


def scored(n_same: int, n_diff: int, seed: int, shift: float = 1.0, decimals: int | None = None):
    """Gaussian scores, same-writer pairs ``shift`` higher; rounded to ``decimals`` for ties."""
    rng = np.random.default_rng(seed)
    same = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
    scores = rng.normal(size=len(same)) + shift * same
    return (scores if decimals is None else np.round(scores, decimals)), same


def sklearn_calibration(scores: np.ndarray, same: np.ndarray, balance: bool) -> tuple[float, float]:
    """The fit's definition written with scikit-learn: Platt's soft targets as two weighted rows per pair.

    ``balance``: each class weighs ½ (the prior-weighted fit) and the targets' log prior odds
    are subtracted; without it, plain unweighted logistic regression minus the log prior odds
    of the (soft) targets, which is what the balanced fit must equal on balanced pairs.
    """
    n_same, n_diff = same.sum(), (~same).sum()
    target = np.where(same, (n_same + 1) / (n_same + 2), 1 / (n_diff + 2))
    weight = np.where(same, 0.5 / n_same, 0.5 / n_diff) if balance else np.full(len(same), 1 / len(same))
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    model.fit(np.r_[scores, scores][:, None], np.r_[np.ones(len(scores)), np.zeros(len(scores))],
              sample_weight=len(scores) * np.r_[weight * target, weight * (1 - target)])
    prior = np.dot(weight, target)
    return float(model.coef_[0, 0]), float(model.intercept_[0] - np.log(prior / (1 - prior)))


@pytest.mark.parametrize("n_same, n_diff, decimals", [(300, 300, None), (80, 400, 2), (500, 60, 1)])
def test_fit_equals_weighted_logistic_regression_in_sklearn(n_same, n_diff, decimals):
    scores, same = scored(n_same, n_diff, seed=n_diff, decimals=decimals)
    fit = fit_calibration(0.3 * scores + 0.5, same)  # cosine-like scale
    slope, offset = sklearn_calibration(0.3 * scores + 0.5, same, balance=True)
    assert (fit.slope, fit.offset) == pytest.approx((slope, offset), abs=1e-9)
    if n_same == n_diff:  # balanced pairs: plain logistic regression minus log prior odds is the same fit
        assert (fit.slope, fit.offset) == pytest.approx(sklearn_calibration(0.3 * scores + 0.5, same, False), abs=1e-9)


def test_fit_on_hand_computed_cases():
    # one pair each: targets 2/3 (same, s=1) and 1/3 (diff, s=0) are met exactly: σ(a + b) = 2/3, σ(b) = 1/3
    fit = fit_calibration(np.array([1.0, 0.0]), np.array([True, False]))
    assert fit.slope == pytest.approx(2 * np.log(2), abs=1e-12) and fit.offset == pytest.approx(-np.log(2), abs=1e-12)
    # unbalanced: one same (s=1, target 2/3), two diff (s=0, target 1/4); weights ½, ¼, ¼;
    # σ(b) = 1/4, σ(a + b) = 2/3; prior of the weighted targets ½·2/3 + ½·1/4 = 11/24
    fit = fit_calibration(np.array([1.0, 0.0, 0.0]), np.array([True, False, False]))
    assert fit.slope == pytest.approx(np.log(6), abs=1e-12)
    assert fit.offset == pytest.approx(-np.log(3) - np.log(11 / 13), abs=1e-12)
    assert fit.log_lr(np.array([0.0, 1.0])) == pytest.approx([fit.offset, fit.offset + fit.slope], abs=0)


def test_scores_that_do_not_separate_get_lr_one_and_cllr_one():
    values = np.array([0.1, 0.4, 0.4, 0.9, 0.2])
    scores = np.r_[values, values, values, values]  # the same values for both classes, 5 same and 15 different
    same = np.r_[np.ones(5, bool), np.zeros(15, bool)]
    fit = fit_calibration(scores, same)
    assert abs(fit.slope) < 1e-12 and abs(fit.offset) < 1e-12
    assert cllr(fit.log_lr(scores), same) == pytest.approx(1.0, abs=1e-12)
    assert fit_calibration(np.full(7, 0.1), np.arange(7) < 2) == Calibration(0.0, 0.0)  # np.std: 1.4e-17
    assert cllr(np.zeros(7), np.arange(7) < 2) == 1.0  # LR = 1 always: exactly 1 bit
    assert min_cllr(np.full(7, 0.5), np.arange(7) < 2) == pytest.approx(1.0, abs=1e-15)
    assert min_cllr(scores, same) == pytest.approx(1.0, abs=1e-15)  # every level holds the prior mix


def test_cllr_on_a_hand_computed_case():
    # same-writer LRs 1 and 3: log2(2) = 1 and log2(4/3); different-writer LRs 1/3, 1, 1/3: log2(4/3), 1, log2(4/3)
    log_lr = np.log([1.0, 3.0, 1 / 3, 1.0, 1 / 3])
    same = np.array([True, True, False, False, False])
    expected = 0.5 * ((1 + np.log2(4 / 3)) / 2 + (1 + 2 * np.log2(4 / 3)) / 3)
    assert cllr(log_lr, same) == pytest.approx(expected, abs=1e-15)
    np.testing.assert_allclose(cllr_terms(log_lr, same), [1, np.log2(4 / 3), np.log2(4 / 3), 1, np.log2(4 / 3)],
                               rtol=0, atol=1e-15)


def test_perfect_and_confidently_wrong_lrs():
    same = np.array([True, True, False, False])
    assert cllr(np.array([np.inf, 30.0, -np.inf, -30.0]), same) == pytest.approx(0.0, abs=1e-12)
    assert cllr(np.array([np.inf, 30.0, np.inf, -30.0]), same) == np.inf  # LR ∞ for a different-writer pair
    assert min_cllr(np.array([0.9, 0.8, 0.1, 0.2]), same) == 0.0
    assert list(pav_log_lr(np.array([0.9, 0.8, 0.1, 0.2]), same)) == [np.inf, np.inf, -np.inf, -np.inf]


def reference_pav(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, float]:
    """Log LRs and min Cllr from scikit-learn's isotonic regression (ties pooled), in float64."""
    posterior = IsotonicRegression().fit(scores, same.astype(np.float64)).predict(scores)
    odds = same.sum() / (~same).sum()
    with np.errstate(divide="ignore"):
        log_lr = np.log(posterior) - np.log1p(-posterior) - np.log(odds)
        # log2(1 + 1/LR) = log2(1 + (1 − P) / (P · odds⁻¹)), 0 where P = 1; log2(1 + LR) likewise, 0 where P = 0
        cost_same = np.log2(1 + (1 - posterior[same]) * odds / posterior[same])
        cost_diff = np.log2(1 + posterior[~same] / ((1 - posterior[~same]) * odds))
    return log_lr, 0.5 * (cost_same.mean() + cost_diff.mean())


@pytest.mark.parametrize("n_same, n_diff, decimals, shift", [(400, 400, None, 1.0), (150, 700, 1, 1.5),
                                                              (60, 40, 0, 3.0)])
def test_min_cllr_equals_sklearn_isotonic_regression(n_same, n_diff, decimals, shift):
    scores, same = scored(n_same, n_diff, seed=n_same, shift=shift, decimals=decimals)
    log_lr, expected = reference_pav(scores, same)
    np.testing.assert_allclose(pav_log_lr(scores, same), log_lr, rtol=0, atol=1e-12)  # ±∞ must match too
    assert min_cllr(scores, same) == pytest.approx(expected, abs=1e-12)
    if decimals == 0:
        assert np.isinf(log_lr).any(), "the case meant to test the ends has no infinite log LR"
    ordered = pav_log_lr(scores, same)[np.argsort(scores, kind="stable")]
    np.testing.assert_array_equal(ordered, np.sort(ordered))  # non-decreasing in the score



@pytest.mark.parametrize("seed", range(4))
def test_min_cllr_of_counts_equals_min_cllr_of_each_weighted_set(seed):
    rng = np.random.default_rng(seed)
    scores, same = scored(int(rng.integers(5, 300)), int(rng.integers(5, 300)), seed=seed,
                          shift=rng.uniform(0, 3), decimals=1 if seed % 2 else None)
    levels, level = np.unique(scores, return_inverse=True)
    copies = rng.poisson(1.0, size=(6, len(scores)))  # six sets: each pair taken 0, 1, 2 … times
    copies[0] = 1
    rows_same = np.stack([np.bincount(level, c * same, len(levels)) for c in copies])
    rows_diff = np.stack([np.bincount(level, c * ~same, len(levels)) for c in copies])
    found = min_cllr_of_counts(rows_same, rows_diff)
    for c, value in zip(copies, found):
        rows = np.repeat(np.arange(len(scores)), c)
        assert value == pytest.approx(min_cllr(scores[rows], same[rows]), abs=1e-12)
    assert found[0] == pytest.approx(cllr(pav_log_lr(scores, same), same), abs=1e-12)
    one_kind = min_cllr_of_counts(rows_same[:1], np.zeros((1, len(levels))))
    assert np.isnan(one_kind).all()
    with pytest.raises(ValueError, match="equal shape"):
        min_cllr_of_counts(rows_same, rows_diff[:, 1:])

@pytest.mark.parametrize("transform", [lambda s: 5 * s - 2, np.exp, lambda s: s ** 3, np.arctan,
                                       lambda s: np.unique(s, return_inverse=True)[1].astype(float)])
def test_min_cllr_is_invariant_to_increasing_transforms(transform):
    scores, same = scored(300, 500, seed=7, decimals=1)
    assert min_cllr(transform(scores), same) == pytest.approx(min_cllr(scores, same), abs=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_cllr_of_any_increasing_calibration_is_at_least_min_cllr(seed):
    val, val_same = scored(200, 300, seed=seed)
    test, test_same = scored(250, 250, seed=seed + 100, shift=1.3)
    least = min_cllr(test, test_same)
    assert 0.0 < least < 1.0
    assert cllr(fit_calibration(val, val_same).log_lr(test), test_same) >= least
    rng = np.random.default_rng(seed)
    for slope, offset in zip(rng.uniform(0.01, 10, 20), rng.normal(0, 3, 20)):
        assert cllr(Calibration(slope, offset).log_lr(test), test_same) >= least - 1e-12


def test_separated_val_pairs_still_give_a_finite_calibration():
    scores = np.r_[np.linspace(0.6, 1.0, 50), np.linspace(-0.2, 0.4, 50)]
    same = np.arange(100) < 50
    fit = fit_calibration(scores, same)
    assert np.isfinite([fit.slope, fit.offset]).all() and fit.slope > 0
    assert 0.0 < cllr(fit.log_lr(scores), same) < 0.1
    assert min_cllr(scores, same) == 0.0


@pytest.mark.parametrize("call", [fit_calibration, min_cllr, lambda s, y: cllr(np.zeros(len(s)), y)])
def test_pairs_of_one_kind_are_a_one_line_error(call):
    with pytest.raises(ValueError, match=r"needs both same-writer and different-writer pairs; got 3 same and 0 "
                                         r"different$"):
        call(np.array([0.1, 0.2, 0.3]), np.array([True, True, True]))


def test_bad_scores_are_one_line_errors():
    with pytest.raises(ValueError, match=r"^calibration: scores contain NaN or infinite values$"):
        fit_calibration(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match=r"^min_cllr: scores and same must be 1-D of equal length"):
        min_cllr(np.zeros(3), np.zeros(2, bool))
    with pytest.raises(ValueError, match=r"^cllr: log_lr contains NaN$"):
        cllr(np.array([np.nan, 0.0]), np.array([True, False]))


def systems(n_same: int, n_diff: int, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``k`` correlated systems' scores (N, k) on very different scales: a pair's shared difficulty plus own noise."""
    rng = np.random.default_rng(seed)
    same = np.r_[np.ones(n_same, bool), np.zeros(n_diff, bool)]
    shared = rng.normal(size=len(same))
    scale, shift, offset = rng.uniform(0.05, 20, k), rng.uniform(0.3, 2, k), rng.normal(0, 3, k)
    return scale * (shared[:, None] + rng.normal(size=(len(same), k)) + shift * same[:, None]) + offset, same


def sklearn_fusion(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, float]:
    """The K-score fit's definition in scikit-learn: each class ½, Platt's targets as two weighted rows per pair."""
    n_same, n_diff = same.sum(), (~same).sum()
    target = np.where(same, (n_same + 1) / (n_same + 2), 1 / (n_diff + 2))
    weight = np.where(same, 0.5 / n_same, 0.5 / n_diff)
    model = LogisticRegression(C=np.inf, solver="newton-cholesky", tol=1e-12, max_iter=1000)
    model.fit(np.r_[scores, scores], np.r_[np.ones(len(scores)), np.zeros(len(scores))],
              sample_weight=len(scores) * np.r_[weight * target, weight * (1 - target)])
    prior = np.dot(weight, target)
    return model.coef_[0], float(model.intercept_[0] - np.log(prior / (1 - prior)))


@pytest.mark.parametrize("n_same, n_diff, k", [(300, 300, 2), (80, 400, 3), (500, 60, 4)])
def test_fusion_equals_weighted_logistic_regression_in_sklearn(n_same, n_diff, k):
    scores, same = systems(n_same, n_diff, k, seed=k)
    fit = fit_fusion(scores, same)
    weights, offset = sklearn_fusion(scores, same)
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-8, atol=1e-10)
    assert fit.offset == pytest.approx(offset, abs=1e-8)
    np.testing.assert_allclose(fit.log_lr(scores), scores @ weights + offset, rtol=0, atol=1e-8)


@pytest.mark.parametrize("l2", [1e-3, 0.05, 2.0])
def test_ridge_fusion_equals_l2_logistic_regression_in_sklearn_on_standardised_scores(l2):
    scores, same = systems(150, 350, 3, seed=4)
    centre, spread = scores.mean(0), scores.std(0)
    n_same, n_diff = same.sum(), (~same).sum()
    target = np.where(same, (n_same + 1) / (n_same + 2), 1 / (n_diff + 2))
    weight = np.where(same, 0.5 / n_same, 0.5 / n_diff)
    # sklearn minimises ½‖w‖²/C + Σ sample_weight · log loss = N (cross-entropy + ½‖w‖²/(C N)): C = 1/(l2 N)
    model = LogisticRegression(C=1 / (l2 * len(scores)), solver="newton-cholesky", tol=1e-12, max_iter=1000)
    standard = (scores - centre) / spread
    model.fit(np.r_[standard, standard], np.r_[np.ones(len(scores)), np.zeros(len(scores))],
              sample_weight=len(scores) * np.r_[weight * target, weight * (1 - target)])
    prior = np.dot(weight, target)
    weights = model.coef_[0] / spread
    offset = model.intercept_[0] - np.dot(weights, centre) - np.log(prior / (1 - prior))
    fit = fit_fusion(scores, same, l2=l2)
    np.testing.assert_allclose(fit.weights, weights, rtol=1e-7)
    assert fit.offset == pytest.approx(offset, abs=1e-8)
    assert np.linalg.norm(np.array(fit.weights) * spread) < np.linalg.norm(np.array(fit_fusion(scores, same).weights) * spread)


def test_ridge_fusion_splits_a_duplicated_system_evenly():
    # [s, s] with weights (a, a) costs ½ l2 · 2 a² σ², one column with weight 2a costs ½ (l2/2) · 4 a² σ²: the same fit
    scores, same = scored(120, 200, seed=8)
    single = fit_fusion(scores[:, None], same, l2=0.2)
    double = fit_fusion(np.c_[scores, scores], same, l2=0.4)
    np.testing.assert_allclose(double.weights, [single.weights[0] / 2] * 2, rtol=1e-9)
    assert double.offset == pytest.approx(single.offset, abs=1e-10)
    with pytest.raises(ValueError, match=r"score column 1 is an affine function of column 0"):
        fit_fusion(np.c_[scores, scores], same)
    with pytest.raises(ValueError, match=r"^fusion: l2=-1.0 must be a finite number >= 0$"):
        fit_fusion(np.c_[scores, scores], same, l2=-1.0)


@pytest.mark.parametrize("seed", range(8))
def test_one_system_fusion_is_the_calibration(seed):
    rng = np.random.default_rng(seed)
    n_same, n_diff = rng.integers(1, 400, 2)
    scores, same = scored(n_same, n_diff, seed=seed, shift=rng.uniform(0, 3), decimals=1 if seed % 2 else None)
    scores = rng.uniform(0.01, 10) * scores + rng.normal(0, 5)
    separated = np.where(same, 1 + scores ** 2, -1 - scores ** 2)  # perfectly separated: Platt's targets bound it
    for values in (scores, separated):
        calibration = fit_calibration(values, same)
        assert fit_fusion(values[:, None], same) == LinearFusion((calibration.slope,), calibration.offset)
        reference = sklearn_calibration(values, same, balance=True)
        assert (calibration.slope, calibration.offset) == pytest.approx(reference, rel=1e-6, abs=1e-8)


def test_fusion_on_a_hand_computed_case():
    # same pairs s = (2, 0), (0, 1) with targets 3/4, weights ¼; one different pair s = (0, 0), target 1/3, weight ½.
    # Three pairs, three parameters: the fit meets the targets, σ(b) = 1/3, σ(2 w₁ + b) = σ(w₂ + b) = 3/4, so
    # b = −log 2, w₁ = log(6)/2, w₂ = log 6; the weighted targets' prior ½·3/4 + ½·1/3 = 13/24 is removed from b.
    fit = fit_fusion(np.array([[2.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), np.array([True, True, False]))
    np.testing.assert_allclose(fit.weights, [np.log(6) / 2, np.log(6)], rtol=0, atol=1e-12)
    assert fit.offset == pytest.approx(-np.log(2) - np.log(13 / 11), abs=1e-12)
    np.testing.assert_allclose(fit.log_lr(np.array([[1.0, 1.0]])), [1.5 * np.log(6) + fit.offset], rtol=0, atol=1e-12)


def test_fusion_is_equivariant_to_affine_rescaling_and_order_of_the_systems():
    scores, same = systems(200, 300, 3, seed=11)
    fit = fit_fusion(scores, same)
    moved = scores * np.array([1.0, -4.0, 0.01]) + np.array([0.0, 7.0, -3.0])
    refit = fit_fusion(moved, same)
    np.testing.assert_allclose(refit.weights, np.array(fit.weights) / [1.0, -4.0, 0.01], rtol=1e-8)
    np.testing.assert_allclose(refit.log_lr(moved), fit.log_lr(scores), rtol=0, atol=1e-8)
    swapped = fit_fusion(scores[:, ::-1], same)
    np.testing.assert_allclose(swapped.weights[::-1], fit.weights, rtol=1e-8)


def test_a_constant_system_gets_weight_zero_and_leaves_the_others_fit_exactly():
    scores, same = scored(150, 250, seed=3)
    calibration = fit_calibration(scores, same)
    constant = np.full(len(scores), 0.7)
    assert fit_fusion(np.c_[constant, scores], same) == LinearFusion((0.0, calibration.slope), calibration.offset)
    assert fit_fusion(np.c_[constant, constant], same) == LinearFusion((0.0, 0.0), 0.0)  # LR 1 everywhere


def test_fused_cllr_is_at_most_each_systems_own_on_the_fitting_pairs():
    scores, same = systems(300, 300, 3, seed=5)
    fused = cllr(fit_fusion(scores, same).log_lr(scores), same)
    for column in scores.T:  # each system's calibration is a fusion with the other weights 0
        assert fused <= cllr(fit_calibration(column, same).log_lr(column), same) + 1e-12


def test_mean_fusion_on_a_hand_computed_case():
    # column 0: mean 1, sd 1; column 1: mean 20, sd 10 → z-scores (−1, 1) each, their mean (−1, 1)
    fusion = mean_fusion(np.array([[0.0, 10.0], [2.0, 30.0]]))
    assert fusion == LinearFusion((0.5, 0.05), -1.5)
    np.testing.assert_allclose(fusion.log_lr(np.array([[0.0, 10.0], [2.0, 30.0], [1.0, 20.0]])), [-1, 1, 0],
                               rtol=0, atol=1e-15)


def test_the_cosine_fusion_space_turns_a_weighted_sum_of_cosines_into_an_inner_product():
    # two rows, two systems: system 0's rows (3, 4) and (0, 2) have cosine 0.8; system 1's (1, 0, 0) and
    # (1, 1, 0) cosine 1/√2 — weights 2 and 0.5 give 1.6 + 0.5/√2, and each row's squared norm is 2.5
    blocks = [np.array([[3.0, 4.0], [0.0, 2.0]]), np.array([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])]
    space = cosine_fusion_space(blocks, (2.0, 0.5))
    assert space.shape == (2, 5) and space.dtype == np.float64
    np.testing.assert_allclose(space @ space.T, [[2.5, 1.6 + 0.5 / np.sqrt(2)], [1.6 + 0.5 / np.sqrt(2), 2.5]],
                               rtol=0, atol=1e-15)
    rng = np.random.default_rng(0)
    blocks = [rng.normal(size=(7, d)) for d in (4, 9, 2)]
    weights = (0.3, 1.7, 0.0)
    fused = sum(w * (b / np.linalg.norm(b, axis=1, keepdims=True)) @ (b / np.linalg.norm(b, axis=1, keepdims=True)).T
                for w, b in zip(weights, blocks))
    space = cosine_fusion_space(blocks, weights)
    np.testing.assert_allclose(space @ space.T, fused, rtol=0, atol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: cosine_fusion_space([np.ones((2, 3)), np.ones((2, 2))], (1.0, -0.2)),
     r"^cosine fusion space: system 1 has weight -0.2 < 0, which no inner product can carry$"),
    (lambda: cosine_fusion_space([np.ones((2, 3))], (1.0, 1.0)), r"^cosine fusion space: 1 blocks for 2 weights$"),
    (lambda: fit_fusion(np.zeros(3), np.array([True, False, True])),
     r"^fusion: scores must be \(pairs, systems\), got shape \(3,\)$"),
    (lambda: fit_fusion(np.array([[0.1, np.inf], [0.2, 0.3]]), np.array([True, False])),
     r"^fusion: scores contain NaN or infinite values$"),
    (lambda: fit_fusion(np.zeros((3, 2)), np.array([True, False])),
     r"^fusion: same must have one entry per row of scores, got \(2,\) and \(3, 2\)$"),
    (lambda: fit_fusion(np.zeros((3, 2)), np.array([True, True, True])),
     r"^fusion needs both same-writer and different-writer pairs; got 3 same and 0 different$"),
    (lambda: fit_fusion(np.c_[np.arange(4.0), np.ones(4), [0, 1, 0, 1], 2 + 3 * np.arange(4.0) - [0, 1, 0, 1]],
                        np.array([True, False, True, False])),  # column 3 = 2 + 3 · column 0 − column 2
     r"^fusion: score column 3 is an affine function of columns 0, 2 on these pairs, so the weights are not "
     r"determined; drop it$"),
    (lambda: mean_fusion(np.c_[np.arange(3.0), np.ones(3)]),
     r"^mean fusion: column 1 of the scores is constant; it cannot be z-scored$"),
    (lambda: LinearFusion((1.0, 2.0), 0.0).log_lr(np.zeros((4, 3))),
     r"^fusion: scores must be \(pairs, 2\), got shape \(4, 3\)$"),
])
def test_bad_fusion_input_is_a_one_line_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
