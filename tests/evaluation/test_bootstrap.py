"""Writer-bootstrap intervals against resampling by hand with scikit-learn, and their behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hvkit.evaluation import EvalData, PairSet, cllr, evaluate, fit_calibration, min_cllr
from hvkit.evaluation.bootstrap import paired_writer_bootstrap, seeded_paired_bootstrap, writer_bootstrap
from hvkit_plugins.evaluators.verification import Verification
from hvkit_plugins.stages.evaluate import verification_report

from .reference import sklearn_eer


def pairs(writers: int, per_writer: int, seed: int, shift: float = 1.0) -> PairSet:
    rng = np.random.default_rng(seed)
    n = writers * per_writer
    same = rng.random(n) < 0.5
    scores = np.round(rng.normal(size=n) + shift * same, 1)  # rounded: ties across levels
    return PairSet(scores, same, np.repeat(rng.permutation(1000)[:writers], per_writer))


def test_intervals_equal_copying_the_drawn_writers_pairs():
    data, threshold, resamples = pairs(12, 15, seed=0), 0.45, 40
    log_lr = 1.7 * data.scores - 0.6  # a calibration fitted elsewhere, held fixed across draws
    out = writer_bootstrap(data, threshold, resamples, confidence=0.8, seed=3, log_lr=log_lr, chunk=7)
    assert writer_bootstrap(data, threshold, resamples, confidence=0.8, seed=3, log_lr=log_lr) == out
    rng, ids = np.random.default_rng(3), np.unique(data.writers)
    draws = {"accuracy": [], "roc_auc": [], "eer": [], "cllr": [], "min_cllr": []}
    for _ in range(resamples):
        rows = np.concatenate([np.flatnonzero(data.writers == ids[k]) for k in rng.integers(0, len(ids), len(ids))])
        scores, same = data.scores[rows], data.same[rows]
        draws["accuracy"].append(np.mean((scores >= threshold) == same))
        draws["roc_auc"].append(roc_auc_score(same, scores))
        draws["eer"].append(sklearn_eer(same, scores))
        draws["cllr"].append(cllr(log_lr[rows], same))
        draws["min_cllr"].append(min_cllr(scores, same))  # PAV refitted on the copied pairs
    assert out["resamples_used"] == resamples and out["confidence"] == 0.8
    for name, values in draws.items():
        np.testing.assert_allclose(out[name], np.percentile(values, [10, 90]), rtol=0, atol=1e-12)


def test_intervals_hold_the_estimate_and_narrow_with_more_writers():
    small, large = pairs(20, 30, seed=1), pairs(500, 30, seed=1)
    widths = []
    for data in (small, large):
        out = writer_bootstrap(data, 0.5, 300)
        auc = roc_auc_score(data.same, data.scores)
        assert out["roc_auc"][0] < auc < out["roc_auc"][1]
        assert out["accuracy"][0] < np.mean((data.scores >= 0.5) == data.same) < out["accuracy"][1]
        widths.append(out["roc_auc"][1] - out["roc_auc"][0])
    assert widths[1] < widths[0] / 3  # ~ 1 / sqrt(writers): 5x narrower for 25x the writers


def test_without_threshold_no_accuracy_and_same_draws_every_time():
    data = pairs(10, 10, seed=2)
    first, again = writer_bootstrap(data, None, 50), writer_bootstrap(data, None, 50)
    assert "accuracy" not in first and "cllr" not in first and first == again


def test_draws_without_both_kinds_of_pairs_are_skipped_or_refused():
    one_kind_each = PairSet([0.9, 0.8, 0.1, 0.2], [True, True, False, False], [0, 0, 1, 1])
    out = writer_bootstrap(one_kind_each, 0.5, 200, seed=0)
    assert 0 < out["resamples_used"] < 200  # draws of writer 0 alone or 1 alone hold one kind only
    with pytest.raises(ValueError, match="no resample"):
        writer_bootstrap(PairSet([0.9, 0.8], [True, True], [0, 1]), 0.5, 10)
    with pytest.raises(ValueError, match="resamples"):
        writer_bootstrap(one_kind_each, 0.5, 0)


def test_verification_reports_intervals_and_can_leave_them_out():
    val, test = pairs(8, 20, seed=4), pairs(30, 20, seed=5)
    data = EvalData(np.zeros((1, 4), np.float32), np.zeros(1), verifiers={"head": {"val": val, "test": test}})
    out = evaluate([Verification(bootstrap=100)], data)["verification"]["head"]
    log_lr = fit_calibration(val.scores, val.same).log_lr(test.scores)
    assert out["ci"] == writer_bootstrap(test, out["threshold"], 100, log_lr=log_lr)
    report = verification_report({"verification": {"head": out}}, "clean")
    low, high = out["ci"]["accuracy"]
    assert f"{out['accuracy']:.4f} ({low:.3f}–{high:.3f})" in report and "95% intervals" in report
    low, high = out["ci"]["cllr"]
    least, most = out["ci"]["min_cllr"]
    assert least <= out["min_cllr"] <= most
    assert f"| {out['cllr']:.4f} ({low:.3f}–{high:.3f}) | {out['min_cllr']:.4f} ({least:.3f}–{most:.3f}) |" in report
    plain = evaluate([Verification(bootstrap=0)], data)["verification"]["head"]
    assert "ci" not in plain and "intervals" not in verification_report({"verification": {"head": plain}}, "clean")
    with pytest.raises(ValueError, match="bootstrap"):
        Verification(bootstrap=-1)


def test_paired_intervals_equal_copying_the_drawn_writers_pairs():
    a = pairs(12, 15, seed=6)
    b = PairSet(np.round(a.scores + np.random.default_rng(7).normal(0, 0.8, len(a.scores)), 1), a.same, a.writers)
    out = paired_writer_bootstrap(a, b, 0.45, 0.3, resamples=40, confidence=0.9, seed=5)
    rng, ids = np.random.default_rng(5), np.unique(a.writers)
    diffs = {"accuracy": [], "roc_auc": [], "eer": []}
    for _ in range(40):
        rows = np.concatenate([np.flatnonzero(a.writers == ids[k]) for k in rng.integers(0, len(ids), len(ids))])
        same = a.same[rows]
        diffs["accuracy"].append(np.mean((a.scores[rows] >= 0.45) == same) - np.mean((b.scores[rows] >= 0.3) == same))
        diffs["roc_auc"].append(roc_auc_score(same, a.scores[rows]) - roc_auc_score(same, b.scores[rows]))
        diffs["eer"].append(sklearn_eer(same, a.scores[rows]) - sklearn_eer(same, b.scores[rows]))
    for name, values in diffs.items():
        np.testing.assert_allclose(out[name], np.percentile(values, [5, 95]), rtol=0, atol=1e-12)
        worse = np.greater_equal(values, 0) if name == "eer" else np.less_equal(values, 0)
        assert out[f"share_a_not_better_{name}"] == np.mean(worse)
    big = pairs(100, 20, seed=9)
    noisier = PairSet(big.scores + np.random.default_rng(10).normal(0, 1.5, len(big.scores)), big.same, big.writers)
    clear = paired_writer_bootstrap(big, noisier, None, None, 200)
    assert clear["share_a_not_better_roc_auc"] == 0 and clear["roc_auc"][0] > 0
    assert paired_writer_bootstrap(noisier, big, None, None, 200)["share_a_not_better_roc_auc"] == 1


def test_paired_cllr_interval_equals_copying_the_drawn_writers_pairs():
    a = pairs(14, 12, seed=21)
    b = PairSet(np.round(a.scores + np.random.default_rng(22).normal(0, 0.8, len(a.scores)), 1), a.same, a.writers)
    lr_a, lr_b = 1.3 * a.scores - 0.7, 0.8 * b.scores - 0.4  # calibrations fitted elsewhere, held fixed
    out = seeded_paired_bootstrap([(a, None, lr_a)], [(b, None, lr_b)], resamples=40, confidence=0.9, seed=3)
    assert "accuracy" not in out and "runs" not in out
    rng, ids = np.random.default_rng(3), np.unique(a.writers)
    diffs, least = [], []
    for _ in range(40):
        rows = np.concatenate([np.flatnonzero(a.writers == ids[k]) for k in rng.integers(0, len(ids), len(ids))])
        diffs.append(cllr(lr_a[rows], a.same[rows]) - cllr(lr_b[rows], a.same[rows]))
        least.append(min_cllr(a.scores[rows], a.same[rows]) - min_cllr(b.scores[rows], a.same[rows]))
    np.testing.assert_allclose(out["cllr"], np.percentile(diffs, [5, 95]), rtol=0, atol=1e-12)
    assert out["share_a_not_better_cllr"] == np.mean(np.greater_equal(diffs, 0))  # lower Cllr is better
    np.testing.assert_allclose(out["min_cllr"], np.percentile(least, [5, 95]), rtol=0, atol=1e-12)
    assert out["share_a_not_better_min_cllr"] == np.mean(np.greater_equal(least, 0))
    assert "cllr" not in seeded_paired_bootstrap([(a, None, lr_a)], [(b, None)], resamples=5)


def test_paired_bootstrap_needs_the_same_pairs():
    a = pairs(5, 10, seed=8)
    shuffled = PairSet(a.scores, a.same[::-1], a.writers)
    with pytest.raises(ValueError, match="same pairs"):
        paired_writer_bootstrap(a, shuffled, None, None, 10)
    assert "accuracy" not in paired_writer_bootstrap(a, a, 0.5, None, 10)


def test_seeded_bootstrap_equals_resampling_writers_and_runs_by_hand():
    base = pairs(10, 12, seed=11)
    noise = np.random.default_rng(12)
    def noisy(sd: float) -> PairSet:
        return PairSet(np.round(base.scores + noise.normal(0, sd, len(base.scores)), 1), base.same, base.writers)

    runs_a, runs_b = [(noisy(0.5), t) for t in (0.4, 0.5, 0.6)], [(noisy(1.0), t) for t in (0.3, 0.5)]
    out = seeded_paired_bootstrap(runs_a, runs_b, resamples=30, confidence=0.9, seed=2)
    writer_rng, run_rng, ids = np.random.default_rng(2), np.random.default_rng([2, 1]), np.unique(base.writers)

    def metrics(run, rows):
        data, threshold = run
        same, scores = data.same[rows], data.scores[rows]
        return np.array([np.mean((scores >= threshold) == same), roc_auc_score(same, scores), sklearn_eer(same, scores),
                         min_cllr(scores, same)])

    diffs = []
    for _ in range(30):
        rows = np.concatenate([np.flatnonzero(base.writers == ids[k])
                               for k in writer_rng.integers(0, len(ids), len(ids))])
        pick_a, pick_b = run_rng.integers(0, 3, 3), run_rng.integers(0, 2, 2)
        diffs.append(np.mean([metrics(runs_a[k], rows) for k in pick_a], 0)
                     - np.mean([metrics(runs_b[k], rows) for k in pick_b], 0))
    diffs = np.array(diffs)
    every = np.arange(len(base.same))
    whole = (np.mean([metrics(r, every) for r in runs_a], 0) - np.mean([metrics(r, every) for r in runs_b], 0))
    assert out["runs"] == [3, 2]
    for k, name in enumerate(("accuracy", "roc_auc", "eer", "min_cllr")):
        np.testing.assert_allclose(out[name], np.percentile(diffs[:, k], [5, 95]), rtol=0, atol=1e-12)
        assert out[f"estimate_{name}"] == pytest.approx(whole[k], abs=1e-12)


def test_seed_noise_widens_the_interval_and_one_run_a_side_is_the_paired_bootstrap():
    base = pairs(200, 20, seed=13)
    b = PairSet(base.scores + np.random.default_rng(14).normal(0, 1.0, len(base.scores)), base.same, base.writers)
    single = paired_writer_bootstrap(base, b, None, None, 300, seed=4)
    assert seeded_paired_bootstrap([(base, None)], [(b, None)], 300, seed=4) == single
    rng = np.random.default_rng(15)
    seeds = [(PairSet(base.scores + rng.normal(0, s, len(base.scores)), base.same, base.writers), None)
             for s in (0.1, 0.8, 1.6)]  # training runs of very different quality
    spread = seeded_paired_bootstrap(seeds, [(b, None)], 300, seed=4)
    assert spread["roc_auc"][1] - spread["roc_auc"][0] > 2 * (single["roc_auc"][1] - single["roc_auc"][0])
    with pytest.raises(ValueError, match="same pairs"):
        seeded_paired_bootstrap(seeds, [(PairSet(b.scores, b.same[::-1], b.writers), None)], 10)
    with pytest.raises(ValueError, match="at least one run"):
        seeded_paired_bootstrap([], [(b, None)], 10)
