"""open_set: DIR at a false alarm rate against a brute-force threshold scan, and the scores against loops."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hvkit.evaluation import EvalData, evaluate
from hvkit.evaluation.bootstrap import writer_weights
from hvkit_plugins.evaluators.linear_probe import writer_split
from hvkit_plugins.evaluators.open_set import (OPEN_SET_SCORES, OpenSet, Probes, detection_identification_rate,
                                               paired_probes_bootstrap, probes_digest)
from hvkit_plugins.stages.evaluate import verification_report

from .reference import clustered


def brute_force_dir(known, correct, unknown, far):
    """The best DIR over every threshold (−∞ and each score) whose share of unknown scores above it is ≤ far."""
    best = 0.0
    for t in np.concatenate([[-np.inf], known, unknown]):
        if np.mean(unknown > t) <= far + 1e-12:
            best = max(best, float(np.mean(correct & (known > t))))
    return best


@pytest.mark.parametrize("far", [0.0, 0.01, 0.1, 0.25, 0.5])
def test_dir_equals_a_scan_of_every_threshold(far):
    rng = np.random.default_rng(int(far * 100))
    known = np.round(rng.normal(1.0, 1.0, 300), 1)  # rounded: ties between and within the two kinds
    unknown = np.round(rng.normal(0.0, 1.0, 200), 1)
    correct = rng.random(300) < 0.8
    assert detection_identification_rate(known, correct, unknown, far) == pytest.approx(
        brute_force_dir(known, correct, unknown, far), abs=1e-12)


def test_weights_count_probes_as_repeats():
    rng = np.random.default_rng(7)
    known, unknown = np.round(rng.normal(1, 1, 80), 1), np.round(rng.normal(0, 1, 60), 1)
    correct = rng.random(80) < 0.7
    wk, wu = rng.integers(0, 4, 80).astype(float), rng.integers(0, 4, 60).astype(float)
    for far in (0.0, 0.05, 0.3):
        repeated = detection_identification_rate(np.repeat(known, wk.astype(int)), np.repeat(correct, wk.astype(int)),
                                                 np.repeat(unknown, wu.astype(int)), far)
        assert detection_identification_rate(known, correct, unknown, far, wk, wu) == pytest.approx(repeated, abs=1e-12)


def reference_draw(labels, evaluator):
    """The labels, and the gallery's, the known probes' and the unknown probes' rows, drawn as the protocol says."""
    writers, counts = np.unique(labels, return_counts=True)
    rng = np.random.default_rng(evaluator.seed)
    eligible = writers[counts >= 2]
    enrolled = rng.choice(eligible, int(round(evaluator.enrolled_fraction * len(eligible))), replace=False)
    known = np.flatnonzero(np.isin(labels, enrolled))
    gallery, probes = (known[r] for r in writer_split(labels[known], evaluator.gallery_fraction, evaluator.seed))
    return labels, gallery, probes, np.flatnonzero(~np.isin(labels, enrolled))


def reference(x, labels, val, evaluator):
    """The evaluator's metrics by loops in float64: the protocol's draw as it makes it, then every score."""
    centre = val.astype(np.float64).mean(axis=0)
    unit = [(v - centre) / np.linalg.norm(v - centre) for v in x.astype(np.float64)]
    _, gallery, probes, unknown = reference_draw(labels, evaluator)

    def best(i):
        scores = {}
        for w in np.unique(labels[gallery]):
            mine = [unit[g] for g in gallery if labels[g] == w]
            if evaluator.match == "mean":
                template = np.sum(mine, axis=0)
                scores[w] = float(unit[i] @ template / np.linalg.norm(template))
            else:
                scores[w] = max(float(unit[i] @ g) for g in mine)
        w = max(scores, key=scores.get)
        return scores[w], w

    known_scores, assigned = zip(*(best(i) for i in probes))
    unknown_scores = np.array([best(i)[0] for i in unknown])
    correct = np.array(assigned) == labels[probes]
    return np.array(known_scores), correct, unknown_scores


@pytest.mark.parametrize("match", ["mean", "nearest"])
def test_metrics_equal_loops_over_every_probe_and_writer(match, tmp_path):
    x, labels = clustered(n=500, dim=8, classes=30, noise=0.9, seed=4)
    val, val_labels = clustered(n=100, dim=8, classes=5, seed=5)
    evaluator = OpenSet(match=match, far_targets=[0.01, 0.1], bootstrap=200, seed=3)
    out = evaluate([evaluator], EvalData(x, labels, val_embeddings=val, val_labels=val_labels,
                                         out_dir=tmp_path))["open_set"]
    known, correct, unknown = reference(x, labels, val, evaluator)
    assert (out["known_probes"], out["unknown_probes"]) == (len(known), len(unknown))
    assert out["enrolled_writers"] + out["unknown_writers"] == 30
    assert out["rank1"] == pytest.approx(correct.mean(), abs=1e-12)
    for far in (0.01, 0.1):
        assert out[f"dir_at_far_{far:g}"] == pytest.approx(brute_force_dir(known, correct, unknown, far), abs=1e-12)
    assert out["detection_auc"] == pytest.approx(
        roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown]), abs=1e-9)
    assert 0.0 < out["dir_at_far_0.01"] <= out["dir_at_far_0.1"] <= out["rank1"] < 1.0
    assert out["ci"]["resamples_used"] == 200 and out["ci"]["confidence"] == 0.95
    for key in ("rank1", "dir_at_far_0.01", "dir_at_far_0.1", "detection_auc"):
        low, high = out["ci"][key]
        assert low <= out[key] <= high and high - low > 0.01
    assert (tmp_path / "open_set_dir.png").stat().st_size > 1000
    with np.load(tmp_path / OPEN_SET_SCORES) as saved:
        found = Probes.load(saved)
        assert list(saved["far_targets"]) == [0.01, 0.1]
        assert str(saved["digest"]) == probes_digest(*reference_draw(labels, evaluator))
    np.testing.assert_allclose(found.known, known, atol=1e-12)
    np.testing.assert_allclose(found.unknown, unknown, atol=1e-12)
    assert np.array_equal(found.correct, correct)
    assert found.metrics([0.01, 0.1]) == {key: out[key] for key in ("rank1", "detection_auc", "dir_at_far_0.01",
                                                                    "dir_at_far_0.1")}
    shown = {key: f"{out[key]:.4f} ({out['ci'][key][0]:.3f}–{out['ci'][key][1]:.3f})"
             for key in ("rank1", "dir_at_far_0.01", "dir_at_far_0.1", "detection_auc")}
    assert (f"Open-set identification: 15 test writers enrolled ({out['gallery_images']} images), 15 unknown; "
            f"rank 1 {shown['rank1']}, detection and identification rate {shown['dir_at_far_0.01']} at a false "
            f"alarm rate of 0.01, {shown['dir_at_far_0.1']} at a false alarm rate of 0.1; detection AUC "
            f"{shown['detection_auc']}.") in verification_report({"open_set": out}, "clean")


def test_separable_writers_are_all_found_and_a_collection_too_small_is_skipped():
    x, labels = clustered(n=300, dim=16, classes=10, noise=0.01, seed=6)
    out = evaluate([OpenSet(bootstrap=0)], EvalData(x, labels))["open_set"]
    assert out["rank1"] == out["dir_at_far_0.01"] == out["detection_auc"] == 1.0 and "ci" not in out
    skipped = evaluate([OpenSet()], EvalData(x[:4], np.array([0, 0, 1, 1])))["open_set"]
    assert skipped == {"skipped": True, "enrolled_writers": 1, "writers": 2}


def probes(seed, known_writers, unknown_writers, shift):
    """Random best scores of probes by the given writers; known probes score ``shift`` higher on average."""
    rng = np.random.default_rng(seed)
    return Probes(np.round(rng.normal(shift, 1, len(known_writers)), 1), rng.random(len(known_writers)) < 0.6,
                  np.round(rng.normal(0, 1, len(unknown_writers)), 1), known_writers, unknown_writers)


def repeated_metrics(run, wk, wu, far_targets):
    """Open-set metrics of the probes each repeated its weight's times, by scikit-learn and the threshold scan."""
    rk, ru = wk.astype(int), wu.astype(int)
    known, correct, unknown = np.repeat(run.known, rk), np.repeat(run.correct, rk), np.repeat(run.unknown, ru)
    out = {"rank1": correct.mean(),
           "detection_auc": roc_auc_score(np.r_[np.ones(len(known)), np.zeros(len(unknown))], np.r_[known, unknown])}
    out.update({f"dir_at_far_{far:g}": brute_force_dir(known, correct, unknown, far) for far in far_targets})
    return out


def test_paired_bootstrap_equals_repeated_probes_draw_by_draw():
    known_writers, unknown_writers = np.repeat(np.arange(12), 5), np.repeat(np.arange(12, 22), 4)
    a, b = probes(1, known_writers, unknown_writers, 1.0), probes(2, known_writers, unknown_writers, 0.5)
    out = paired_probes_bootstrap([a], [b], [0.05, 0.2], resamples=60, confidence=0.9, seed=5)
    draws = [{name: repeated_metrics(a, wk, wu, [0.05, 0.2])[name] - value
              for name, value in repeated_metrics(b, wk, wu, [0.05, 0.2]).items()}
             for wk, wu in zip(writer_weights(known_writers, 60, 5), writer_weights(unknown_writers, 60, 6))]
    assert out["resamples_used"] == 60 and "runs" not in out
    for name in ("rank1", "detection_auc", "dir_at_far_0.05", "dir_at_far_0.2"):
        values = [d[name] for d in draws]
        assert out[name] == pytest.approx(list(np.percentile(values, [5, 95])), abs=1e-9)
        assert out[f"share_a_not_better_{name}"] == pytest.approx(np.mean(np.array(values) <= 0), abs=1e-12)
    assert out["share_a_not_better_detection_auc"] < 0.1  # A's known probes stand out more
    same = paired_probes_bootstrap([a], [a], [0.05], resamples=20)
    assert same["rank1"] == same["dir_at_far_0.05"] == same["detection_auc"] == [0.0, 0.0]


def test_paired_bootstrap_over_runs_reports_the_difference_of_the_runs_means():
    known_writers, unknown_writers = np.repeat(np.arange(8), 4), np.repeat(np.arange(8, 14), 3)
    side_a = [probes(s, known_writers, unknown_writers, 1.0) for s in (1, 2, 3)]
    side_b = [probes(s, known_writers, unknown_writers, 0.0) for s in (4, 5)]
    out = paired_probes_bootstrap(side_a, side_b, [0.1], resamples=40)
    assert out["runs"] == [3, 2]
    for name in ("rank1", "detection_auc", "dir_at_far_0.1"):
        expected = np.mean([r.metrics([0.1])[name] for r in side_a]) - np.mean([r.metrics([0.1])[name] for r in side_b])
        assert out[f"estimate_{name}"] == pytest.approx(expected, abs=1e-12)
    other = probes(9, np.repeat(np.arange(8), 4)[::-1], unknown_writers, 0.0)
    with pytest.raises(ValueError, match="same probes"):
        paired_probes_bootstrap(side_a, [other], [0.1], resamples=5)


@pytest.mark.parametrize("kwargs, message", [({"enrolled_fraction": 1.0}, "enrolled_fraction"),
                                             ({"gallery_fraction": 0.0}, "gallery_fraction"),
                                             ({"match": "max"}, "match"), ({"far_targets": []}, "far_targets"),
                                             ({"far_targets": [1.0]}, "far_targets"), ({"bootstrap": -1}, "bootstrap"),
                                             ({"confidence": 0.0}, "confidence")])
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        OpenSet(**kwargs)
