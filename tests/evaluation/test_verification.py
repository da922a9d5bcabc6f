"""The verification evaluator against scikit-learn, hand-made cases, and its plots."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import precision_recall_fscore_support, roc_auc_score

from hvkit.evaluation import EvalData, PairSet, cllr, evaluate, fit_calibration, min_cllr
from hvkit_plugins.evaluators import register_evaluators
from hvkit_plugins.evaluators.verification import Verification, document_split

from .reference import clustered, sklearn_eer, sklearn_tar_at_far


def pair_set(n: int, seed: int, shift: float = 1.0, writers: int = 8) -> PairSet:
    rng = np.random.default_rng(seed)
    same = rng.random(n) < 0.5
    scores = 1 / (1 + np.exp(-(rng.normal(size=n) + shift * (2 * same - 1))))
    return PairSet(scores, same, rng.integers(0, writers, n))


def run(verifiers, embeddings=None, labels=None, out_dir=None, **params):
    x, y = (np.zeros((1, 4), np.float32), np.zeros(1)) if embeddings is None else (embeddings, labels)
    return evaluate([Verification(**params)], EvalData(x, y, verifiers=verifiers, out_dir=out_dir))["verification"]


def test_metrics_equal_sklearn():
    val, test = pair_set(400, 0), pair_set(1000, 1)
    out = run({"head": {"val": val, "test": test}})["head"]
    assert out["roc_auc"] == pytest.approx(roc_auc_score(test.same, test.scores), abs=1e-12)
    assert out["eer"] == pytest.approx(sklearn_eer(test.same, test.scores), abs=1e-12)
    for far in (1e-2, 1e-3):
        assert out[f"tar_at_far_{far:g}"] == pytest.approx(sklearn_tar_at_far(test.same, test.scores, far), abs=1e-12)
    accepted = test.scores >= out["threshold"]
    precision, recall, f1, _ = precision_recall_fscore_support(test.same, accepted, average="binary")
    assert (out["precision"], out["recall"], out["f1"]) == pytest.approx((precision, recall, f1), abs=1e-12)
    assert out["accuracy"] == pytest.approx(np.mean(accepted == test.same))
    assert out["accuracy_at_fixed_threshold"] == pytest.approx(np.mean((test.scores >= 0.5) == test.same))
    assert (out["pairs"], out["same_pairs"]) == (1000, int(test.same.sum()))


def test_threshold_is_chosen_on_val_not_test():
    # val separates at 0.5; test separates at 0.15, so a threshold tuned on test would score 1.0
    val = PairSet([0.2, 0.4, 0.6, 0.8], [False, False, True, True], [0, 0, 1, 1])
    test = PairSet([0.05, 0.1, 0.2, 0.4], [False, False, True, True], [0, 0, 1, 1])
    out = run({"head": {"val": val, "test": test}})["head"]
    assert out["threshold"] == pytest.approx(0.5) and out["val_accuracy"] == 1.0
    assert out["accuracy"] == 0.5  # every test pair rejected: the two different pairs right, the two same wrong
    assert (out["precision"], out["recall"], out["f1"]) == (0.0, 0.0, 0.0)


def test_hand_computed_case():
    test = PairSet([0.9, 0.8, 0.7, 0.6, 0.4, 0.3], [1, 1, 0, 1, 0, 0], [0, 0, 0, 1, 1, 1])
    val = PairSet([0.7, 0.2], [True, False], [0, 1])
    out = run({"head": {"val": val, "test": test}}, fixed_threshold=0.65)["head"]
    assert out["roc_auc"] == pytest.approx(8 / 9)
    assert out["eer"] == pytest.approx(1 / 3)
    assert out["threshold"] == pytest.approx(0.45)  # midway between val's different (0.2) and same (0.7)
    assert out["accuracy"] == pytest.approx(5 / 6)  # accepts 0.9, 0.8, 0.7, 0.6: only 0.7 is wrong
    assert out["accuracy_at_fixed_threshold"] == pytest.approx(4 / 6)  # 0.9, 0.8 right; 0.7 wrong; 0.6 wrong; 0.4, 0.3 right
    assert out["fixed_threshold"] == 0.65


def test_per_writer_eer_on_a_hand_made_case():
    # writer 0: perfectly separated (EER 0); writer 1: inverted (EER 1); writer 2: same pairs only (left out)
    test = PairSet(scores=[0.9, 0.1, 0.2, 0.8, 0.5, 0.6], same=[1, 0, 1, 0, 1, 1], writers=[0, 0, 1, 1, 2, 2])
    out = run({"head": {"test": test}})["head"]
    assert out["eer_per_writer"] == pytest.approx(0.5) and out["writers_with_eer"] == 2
    assert "threshold" not in out and "accuracy" not in out, "no val pairs: no val threshold"


def test_likelihood_ratios_are_calibrated_on_val_and_scored_on_test():
    val, test = pair_set(400, 0), pair_set(1000, 1, shift=1.5)
    out = run({"head": {"val": val, "test": test}})["head"]
    fit = fit_calibration(val.scores, val.same)
    assert out["calibration"] == {"slope": fit.slope, "offset": fit.offset}
    assert out["cllr"] == pytest.approx(cllr(fit.log_lr(test.scores), test.same), abs=1e-12)
    assert out["min_cllr"] == pytest.approx(min_cllr(test.scores, test.same), abs=1e-12)
    assert out["cllr_cal"] == pytest.approx(out["cllr"] - out["min_cllr"], abs=1e-12)
    assert 0 < out["min_cllr"] <= out["cllr"] < 1
    assert out["ci"]["cllr"][0] < out["cllr"] < out["ci"]["cllr"][1]
    on_test = run({"head": {"val": test, "test": test}})["head"]  # fitted on test itself: nearly no calibration loss
    assert 0 <= on_test["cllr_cal"] < out["cllr_cal"]


def test_without_val_pairs_only_the_discrimination_loss():
    out = run({"head": {"test": pair_set(300, 2)}})["head"]
    assert "min_cllr" in out and not {"cllr", "cllr_cal", "calibration"} & set(out)
    assert "cllr" not in out["ci"]


def test_val_pairs_of_one_kind_are_a_one_line_error():
    val = PairSet([0.7, 0.6], [True, True], [0, 1])
    with pytest.raises(ValueError, match=r"^ROC statistics need both same and different pairs; got 2 same and 0 "
                                         r"different$"):
        run({"head": {"val": val, "test": pair_set(100, 3)}})


def test_all_pairs_scores_every_test_pair():
    x, labels = clustered(n=300, classes=10, noise=1.5, seed=3)
    out = run({}, x, labels)["all_pairs"]
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), 1)
    same, scores = labels[i] == labels[j], np.sum(unit[i] * unit[j], axis=1)
    assert out["pairs"] == len(i) and out["same_pairs"] == same.sum()
    assert abs(out["roc_auc"] - roc_auc_score(same, scores)) <= out["roc_auc_error_bound"] + 1e-9
    assert out["eer"] == pytest.approx(sklearn_eer(same, scores), abs=1e-3)
    assert "all_pairs" not in run({}, x, labels, all_pairs=False)


def test_plots_are_valid_pngs(tmp_path):
    x, labels = clustered(n=100, classes=5, seed=4)
    run({"head": {"val": pair_set(200, 2), "test": pair_set(300, 3)}}, x, labels, out_dir=tmp_path)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["verification_all_pairs_roc_det.png", "verification_all_pairs_scores.png",
                     "verification_head_roc_det.png", "verification_head_scores.png", "verification_head_tippett.png"]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with Image.open(tmp_path / name) as image:
            image.verify()
            assert image.size[0] >= 600


def test_plot_names_are_safe_file_names(tmp_path):
    run({"ssl/hv pair": {"test": pair_set(100, 5)}}, out_dir=tmp_path, all_pairs=False)  # no val: no Tippett plot
    assert sorted(p.name for p in tmp_path.iterdir()) == ["verification_ssl_hv_pair_roc_det.png",
                                                         "verification_ssl_hv_pair_scores.png"]


def test_a_verifier_named_all_pairs_is_refused():
    with pytest.raises(ValueError, match="all_pairs"):
        run({"all_pairs": {"test": pair_set(100, 6)}})
    assert "all_pairs" in run({"all_pairs": {"test": pair_set(100, 6)}}, all_pairs=False)


@pytest.mark.parametrize("far_targets", [[], [0.0], [1.5]])
def test_invalid_far_targets(far_targets):
    with pytest.raises(ValueError, match="far_targets"):
        Verification(far_targets=far_targets)


def test_registered_names():
    names = []
    register_evaluators(lambda name, factory: names.append(name))
    assert names == ["embedding_map", "knn_probe", "linear_probe", "open_set", "retrieval", "set_verification",
                     "verification"]


def test_pairs_within_one_document_are_scored_apart_from_the_others():
    rng = np.random.default_rng(3)
    same = np.r_[np.ones(60, bool), np.zeros(50, bool)]
    within = np.r_[np.arange(60) % 3 == 0, np.zeros(50, bool)]
    scores = rng.normal(0, 1, 110) + same + within  # a pair of one sitting scores higher
    pairs = PairSet(scores, same, np.arange(110) % 7, same_document=within)
    found = document_split(pairs)
    negatives = ~same
    assert found["same_document_pairs"] == 20
    for key, positives in (("roc_auc_same_document", within), ("roc_auc_other_document", same & ~within)):
        rows = positives | negatives
        assert found[key] == pytest.approx(roc_auc_score(same[rows], scores[rows]), abs=1e-12)
    assert found["roc_auc_same_document"] > found["roc_auc_other_document"]
    out = evaluate([Verification(bootstrap=0, all_pairs=False)],
                   EvalData(np.zeros((1, 2)), np.zeros(1), verifiers={"v": {"test": pairs}}))["verification"]["v"]
    assert out["roc_auc_same_document"] == found["roc_auc_same_document"]
    assert document_split(PairSet(scores, same, np.zeros(110))) == {}
    assert document_split(PairSet(scores, same, np.zeros(110), same_document=np.zeros(110, bool))) == {}
    with pytest.raises(ValueError, match="same_document must be"):
        PairSet(scores, same, np.zeros(110), same_document=np.zeros(3, bool))
