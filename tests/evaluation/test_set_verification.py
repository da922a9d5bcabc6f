"""set_verification: the k-against-k trials, their scores (a float64 formula), thresholds and the size trend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from hvkit.evaluation import EvalData, cllr, evaluate, fit_calibration, min_cllr
from hvkit_plugins.evaluators.set_verification import SetVerification, set_scores, set_trials
from hvkit_plugins.stages.evaluate import verification_report

from .reference import clustered, sklearn_eer


def documents_of(labels: np.ndarray, per_writer: int) -> np.ndarray:
    """Each writer's images dealt round-robin over ``per_writer`` documents (codes unique across writers)."""
    out = np.empty(len(labels), np.int64)
    for w in np.unique(labels):
        rows = np.flatnonzero(labels == w)
        out[rows] = w * per_writer + np.arange(len(rows)) % per_writer
    return out


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("with_documents", [False, True])
def test_trials_are_balanced_disjoint_and_cross_document(k, with_documents):
    labels = np.repeat(np.arange(9), [1, 2, 5, 6, 7, 8, 9, 10, 12])
    documents = documents_of(labels, 3) if with_documents else None
    trials = set_trials(labels, documents, k, 4, np.random.default_rng(0))
    same = [t for t in trials if t[2]]
    assert [t[2] for t in trials] == [True, False] * len(same)
    for (known, questioned, _), (known_again, other, _) in zip(trials[::2], trials[1::2]):
        assert len(known) == len(questioned) == len(other) == k and known is known_again
        assert len(set(known) | set(questioned)) == 2 * k and len(set(labels[known]) | set(labels[questioned])) == 1
        assert len(set(other)) == k and len(set(labels[other])) == 1 and labels[other[0]] != labels[known[0]]
        if with_documents:  # the questioned sets from one document each, the known from others
            assert len(set(documents[questioned])) == len(set(documents[other])) == 1
            assert not set(documents[known]) & set(documents[questioned])
    writers = labels[[t[0][0] for t in same]]
    enough = [w for w in range(9) if np.sum(labels == w) >= 2 * k]
    if with_documents:  # a document of k images beside k more in the others: 3+2+2 serves k = 3, 2+2+2 does not
        counts = {w: np.bincount(documents[labels == w]) for w in range(9)}
        enough = [w for w in range(9) if any(k <= c <= np.sum(labels == w) - k for c in counts[w])]
        assert (3 in enough) is (k == 1) and 4 in enough
    assert sorted(set(writers)) == enough and all(np.sum(writers == w) == 4 for w in enough)
    again = set_trials(labels, documents, k, 4, np.random.default_rng(0))
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(trials, again))


def test_common_writers_are_those_the_largest_size_serves():
    labels = np.repeat(np.arange(8), [2, 3, 4, 5, 6, 8, 9, 12])
    data = EvalData(np.random.default_rng(0).standard_normal((len(labels), 4)).astype(np.float32), labels)
    apart = evaluate([SetVerification(sizes=[1, 3], bootstrap=0)], data)["set_verification"]
    common = evaluate([SetVerification(sizes=[1, 3], common_writers=True, bootstrap=0)], data)["set_verification"]
    assert (apart["k1"]["writers"], apart["k3"]["writers"]) == (8, 4)  # 2k images each: 6, 8, 9, 12
    assert common["k1"]["writers"] == common["k3"]["writers"] == 4 and common["k3"] == apart["k3"]
    trials = set_trials(labels, None, 1, 2, np.random.default_rng(0), writers={5, 7})
    assert [int(labels[t[0][0]]) for t in trials] == [5, 5, 5, 5, 7, 7, 7, 7]
    assert {int(labels[t[1][0]]) for t in trials if not t[2]} - {5, 7}  # partners from every writer


def test_a_writer_of_one_document_has_no_cross_document_trial():
    labels = np.repeat(np.arange(4), 6)
    documents = np.repeat(np.arange(4), 6)  # one letter each
    documents[:3] = 99  # writer 0: two documents of three images
    trials = set_trials(labels, documents, 2, 3, np.random.default_rng(1))
    assert {int(labels[t[0][0]]) for t in trials} == {0} and len(trials) == 6
    assert len(set_trials(labels, None, 2, 3, np.random.default_rng(1))) == 24


def test_scores_equal_the_cosine_of_summed_unit_vectors():
    x, labels = clustered(n=120, dim=8, classes=6, seed=3)
    trials = set_trials(labels, None, 3, 2, np.random.default_rng(2))
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    pairs = set_scores(unit, labels, trials)
    for (known, questioned, same), score, flag, writer in zip(trials, pairs.scores, pairs.same, pairs.writers):
        a = unit[known].sum(axis=0)
        b = unit[questioned].sum(axis=0)
        assert score == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b), abs=1e-12)
        assert flag == same and writer == labels[known[0]]


def test_mean_and_max_aggregates_equal_loops_over_the_cross_pairs():
    x, labels = clustered(n=120, dim=8, classes=6, seed=3)
    trials = set_trials(labels, None, 3, 2, np.random.default_rng(2))
    unit = x.astype(np.float64) / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    mean, top = set_scores(unit, labels, trials, "mean"), set_scores(unit, labels, trials, "max")
    for (known, questioned, _), m, t in zip(trials, mean.scores, top.scores):
        cross = [float(unit[a] @ unit[b]) for a in known for b in questioned]
        assert m == pytest.approx(np.mean(cross), abs=1e-12) and t == pytest.approx(max(cross), abs=1e-12)
    single = set_trials(labels, None, 1, 2, np.random.default_rng(4))  # one image a side: all three agree
    assert np.allclose(set_scores(unit, labels, single, "mean").scores, set_scores(unit, labels, single).scores)
    assert np.allclose(set_scores(unit, labels, single, "max").scores, set_scores(unit, labels, single).scores)


def test_k1_without_documents_is_the_centred_cosine_of_single_pairs():
    x, labels = clustered(n=200, dim=8, classes=10, seed=5)
    val_x, val_labels = clustered(n=100, dim=8, classes=5, seed=6)
    data = EvalData(x, labels, val_embeddings=val_x, val_labels=val_labels)
    out = evaluate([SetVerification(sizes=[1], trials=3, bootstrap=0, seed=7)], data)["set_verification"]["k1"]
    trials = set_trials(labels, None, 1, 3, np.random.default_rng([7, 1, 0]))
    centred = x.astype(np.float64) - val_x.astype(np.float64).mean(axis=0)
    first = centred[[t[0][0] for t in trials]]
    second = centred[[t[1][0] for t in trials]]
    scores = np.einsum("ij,ij->i", first, second) / np.linalg.norm(first, axis=1) / np.linalg.norm(second, axis=1)
    same = np.array([t[2] for t in trials])
    assert out["trials"] == len(trials) and out["writers"] == len(np.unique(labels))
    assert out["roc_auc"] == pytest.approx(roc_auc_score(same, scores), abs=1e-6)
    assert out["eer"] == pytest.approx(sklearn_eer(same, scores), abs=1e-6)
    assert out["accuracy"] == pytest.approx(np.mean((scores >= out["threshold"]) == same), abs=1e-12)
    val_trials = set_trials(val_labels, None, 1, 3, np.random.default_rng([7, 1, 1]))
    val_centred = val_x.astype(np.float64) - val_x.astype(np.float64).mean(axis=0)
    a, b = (val_centred[[t[n][0] for t in val_trials]] for n in (0, 1))
    val_scores = np.einsum("ij,ij->i", a, b) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    calibration = fit_calibration(val_scores, np.array([t[2] for t in val_trials]))
    assert out["cllr"] == pytest.approx(cllr(calibration.log_lr(scores), same), abs=1e-9)
    assert out["min_cllr"] == pytest.approx(min_cllr(scores, same), abs=1e-9) and out["min_cllr"] < out["cllr"] < 1
    assert 0.5 < out["val_accuracy"] <= 1.0


def test_more_images_a_side_verify_better_and_the_report_is_complete(tmp_path):
    x, labels = clustered(n=900, dim=16, classes=40, noise=3.0, seed=8)
    val_x, val_labels = clustered(n=400, dim=16, classes=20, noise=3.0, seed=9)
    data = EvalData(x, labels, val_embeddings=val_x, val_labels=val_labels, out_dir=tmp_path,
                    documents=documents_of(labels, 3), val_documents=documents_of(val_labels, 3))
    out = evaluate([SetVerification(sizes=[1, 4, 500], bootstrap=200)], data)["set_verification"]
    assert out["cross_document"] is True
    assert out["k1"]["roc_auc"] + 0.05 < out["k4"]["roc_auc"] and out["k1"]["accuracy"] < out["k4"]["accuracy"]
    assert out["k500"] == {"writers": 0, "trials": 0}
    low, high = out["k4"]["ci"]["roc_auc"]
    assert low <= out["k4"]["roc_auc"] <= high and out["k4"]["ci"]["resamples_used"] == 200
    assert (tmp_path / "set_verification.png").stat().st_size > 1000
    json.dumps(out)
    report = verification_report({"set_verification": out}, "clean").splitlines()
    assert "different documents" in report[3] and report[5].startswith("| k | trials | writers | accuracy")
    k4 = out["k4"]
    cells = [f"{k4[key]:.4f} ({k4['ci'][key][0]:.3f}–{k4['ci'][key][1]:.3f})"
             for key in ("accuracy", "roc_auc", "eer", "cllr", "min_cllr")]
    assert report[8] == f"| 4 | {k4['trials']} | {k4['writers']} | " + " | ".join(cells) + " |"
    assert report[9] == "| 500 | 0 | 0 | — | — | — | — | — |"
    alone = evaluate([SetVerification(sizes=[4], bootstrap=0)], EvalData(x, labels))["set_verification"]
    assert alone["cross_document"] is False and "accuracy" not in alone["k4"] and alone["k4"]["roc_auc"] > 0.75


@pytest.mark.parametrize("kwargs, message", [({"sizes": []}, "sizes"), ({"sizes": [0]}, "sizes"),
                                             ({"sizes": [2, 2]}, "sizes"), ({"trials": 0}, "trials=0"),
                                             ({"aggregate": "median"}, "aggregate='median' must be one of"),
                                             ({"bootstrap": -1}, "bootstrap"), ({"confidence": 1.0}, "confidence")])
def test_invalid_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SetVerification(**kwargs)

