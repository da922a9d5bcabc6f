"""The score_fusion stage: linear logistic fusion of earlier evaluations' verifiers, fitted on the val pairs."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.evaluation import Calibration, RocCounts, cllr, fit_fusion, mean_fusion, min_cllr
from hvkit.pipeline import reevaluate, run
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.stages.evaluate import PAIR_SCORE_FILES, load_pair_scores, load_pairs_digest
from hvkit_plugins.stages.score_fusion import ScoreFusion

from .test_compare import EVAL, TRAIN
from .test_compare import RECIPE as COMPARED

MEMBERS = ["eval_first/wccn_pair", "eval_second/wccn_pair", "eval_first/cosine_pair"]
RECIPE = {
    **COMPARED, "name": "tiny_score_fusion",
    "stages": {**COMPARED["stages"],  # two small models, each evaluated with cosine_pair and wccn_pair
               "fusion": {"stage": "score_fusion", "members": MEMBERS, "plots": True,
                          "verification": {"bootstrap": 50}},
               "fusion_mean": {"stage": "score_fusion", "fit": "mean", "plots": False,
                               "members": ["eval_first/cosine_pair", "eval_second/cosine_pair"]},
               "fused_again": {"stage": "score_fusion", "members": ["fusion/fused", "eval_second/cosine_pair"],
                               "plots": False, "verification": {"bootstrap": 0}, "l2": 0.3},
               "fusion_space": {"stage": "score_fusion", "fit": "mean", "plots": False, "evaluators": ["retrieval"],
                                "verification": {"bootstrap": 0},
                                "members": ["eval_first/wccn_pair", "eval_second/cosine_pair", "eval_second/wccn_pair"]},
               "nested_space": {"stage": "score_fusion", "fit": "mean", "plots": False, "evaluators": ["retrieval"],
                                "verification": {"bootstrap": 0},
                                "members": ["fusion_mean/fused", "eval_second/cosine_pair", "eval_first/cosine_pair"]}},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("score_fusion")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return run(root / "recipe.yaml", [], run_dir=root / "run", device="cpu", console=lambda _: None)


def saved(run_dir: Path, member: str) -> dict[str, np.ndarray]:
    """A member's val and test pairs as its evaluation saved them."""
    stage, verifier = member.split("/")
    return {part: load_pair_scores(run_dir / "stages" / stage / file)[verifier][0]
            for part, file in PAIR_SCORE_FILES.items()}


def test_fused_metrics_equal_a_recomputation_from_the_saved_pair_scores(run_dir: Path) -> None:
    members = [saved(run_dir, m) for m in MEMBERS]
    val = np.column_stack([m["val"].scores for m in members])
    test = np.column_stack([m["test"].scores for m in members])
    val_same, test_same = members[0]["val"].same, members[0]["test"].same
    fusion = fit_fusion(val, val_same)
    everything = json.loads((run_dir / "metrics.json").read_text())
    metrics = everything["fusion"]
    assert metrics["fusion"] == {
        "fit": "logistic", "members": MEMBERS, "weights": dict(zip(MEMBERS, fusion.weights)),
        "weights_per_sd": {m: w * s for m, w, s in zip(MEMBERS, fusion.weights, val.std(0))},
        "offset": fusion.offset}
    assert metrics["pairs"] == {"val": len(val), "test": len(test)} and metrics["protocol"] == "clean"
    resolved = yaml.safe_load((run_dir / "recipe.resolved.yaml").read_text())["stages"]["fusion"]["verification"]
    assert resolved == {"name": "verification", "fixed_threshold": 0.0, "far_targets": [0.01, 0.001],
                        "all_pairs": False, "bootstrap": 50, "confidence": 0.95}  # {bootstrap: 50} tuned the default

    stage_dir = run_dir / "stages" / "fusion"
    fused = {part: load_pair_scores(stage_dir / file) for part, file in PAIR_SCORE_FILES.items()}
    assert list(fused["test"]) == list(fused["val"]) == ["fused"]
    (got_test, threshold), (got_val, _) = fused["test"]["fused"], fused["val"]["fused"]
    np.testing.assert_array_equal(got_test.scores, fusion.log_lr(test))
    np.testing.assert_array_equal(got_val.scores, fusion.log_lr(val))
    np.testing.assert_array_equal(got_test.writers, members[0]["test"].writers)
    for part, file in PAIR_SCORE_FILES.items():
        digest = load_pairs_digest(run_dir / "stages" / "eval_first" / file)
        assert load_pairs_digest(stage_dir / file) == digest is not None

    found = metrics["verification"]["fused"]
    log_lr = fusion.log_lr(test)
    roc = RocCounts.from_scores(log_lr, test_same)
    best, _ = RocCounts.from_scores(fusion.log_lr(val), val_same).best_threshold()
    assert found["threshold"] == threshold == best
    assert found["accuracy"] == np.mean((log_lr >= best) == test_same)
    assert found["fixed_threshold"] == 0.0  # LR 1: the even-odds decision on a log LR
    assert found["accuracy_at_fixed_threshold"] == np.mean((log_lr >= 0) == test_same)
    assert (found["roc_auc"], found["eer"], found["tar_at_far_0.01"]) == (roc.auc(), roc.eer(), roc.tar_at_far(0.01))
    assert found["min_cllr"] == min_cllr(log_lr, test_same)
    # the evaluator's own calibration of a logistic fusion is the identity: the fused scores are already log LRs
    assert found["calibration"] == pytest.approx({"slope": 1.0, "offset": 0.0}, abs=1e-7)
    assert found["cllr"] == pytest.approx(cllr(log_lr, test_same), abs=1e-9)
    assert set(found["ci"]) >= {"accuracy", "roc_auc", "eer", "cllr"} and "all_pairs" not in metrics["verification"]
    for plot in ("roc_det", "scores", "tippett"):
        assert (stage_dir / f"verification_fused_{plot}.png").is_file()

    report = (run_dir / "report.md").read_text().split("## fusion\n")[1].split("\n## ")[0]
    for name in MEMBERS:  # each member's row as its evaluation reported it, above the fused row
        stage, verifier = name.split("/")
        assert f"| {name} | {everything[stage]['verification'][verifier]['accuracy']:.4f} (" in report
    assert f"| fused | {found['accuracy']:.4f} (" in report
    assert f"fused = {fusion.weights[0]:+.4g} · {MEMBERS[0]} " in report
    assert f"{fusion.offset:+.4g} (natural log LR, by logistic regression on {len(val)} val pairs;" in report


def test_mean_fusion_is_the_mean_of_the_val_z_scores_calibrated_by_the_evaluator(run_dir: Path) -> None:
    members = [saved(run_dir, m) for m in ("eval_first/cosine_pair", "eval_second/cosine_pair")]
    val = np.column_stack([m["val"].scores for m in members])
    test = np.column_stack([m["test"].scores for m in members])
    expected = ((test - val.mean(0)) / val.std(0)).mean(1)
    (got, _), = load_pair_scores(run_dir / "stages" / "fusion_mean" / "test_pair_scores.npz").values()
    np.testing.assert_allclose(got.scores, expected, rtol=0, atol=1e-12)
    metrics = json.loads((run_dir / "metrics.json").read_text())["fusion_mean"]
    assert metrics["fusion"]["fit"] == "mean"
    assert metrics["fusion"]["weights_per_sd"] == pytest.approx({m: 0.5 for m in metrics["fusion"]["members"]})
    assert metrics["fusion"]["offset"] == mean_fusion(val).offset
    assert metrics["verification"]["fused"]["roc_auc"] == RocCounts.from_scores(expected, got.same).auc()


def test_a_fusion_may_be_fused_again_with_a_ridge(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())["fused_again"]
    members = ["fusion/fused", "eval_second/cosine_pair"]
    assert metrics["fusion"]["members"] == members and metrics["fusion"]["l2"] == 0.3
    assert "ci" not in metrics["verification"]["fused"]
    found = [saved(run_dir, m)["val"] for m in members]
    ridge = fit_fusion(np.column_stack([f.scores for f in found]), found[0].same, l2=0.3)
    assert metrics["fusion"]["weights"] == dict(zip(members, ridge.weights))
    assert metrics["fusion"]["offset"] == ridge.offset
    plain = fit_fusion(np.column_stack([f.scores for f in found]), found[0].same)
    assert ridge.weights != pytest.approx(plain.weights, rel=1e-3)


@pytest.mark.parametrize("settings, message", [
    ("l2: -0.5", "l2=-0.5 must be a finite number >= 0"),
    ("{fit: mean, l2: 0.1}", "l2=0.1 applies to fit: logistic, not fit: mean"),
])
def test_a_bad_ridge_is_an_error_of_hvkit_validate(tmp_path: Path, settings: str, message: str) -> None:
    recipe = {**RECIPE, "stages": {**COMPARED["stages"], "fusion": {"stage": "score_fusion", "members": MEMBERS,
                                                                    **yaml.safe_load("{" + settings.strip("{}") + "}")}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path}:stages.fusion.l2: {message}\n"
    with pytest.raises(ValueError, match=f"^{message}$"):
        ScoreFusion(MEMBERS, **yaml.safe_load("{" + settings.strip("{}") + "}"))


def test_compare_takes_the_fused_verifier(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["compare", str(run_dir), "fusion/fused", "eval_first/wccn_pair",
                                       "--resamples", 50, "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    fused = json.loads((run_dir / "metrics.json").read_text())["fusion"]["verification"]["fused"]
    assert (out["a"]["ref"], out["a"]["roc_auc"], out["a"]["accuracy"]) == ("fusion/fused", fused["roc_auc"],
                                                                            fused["accuracy"])


def test_verify_scores_two_files_by_a_fusion_as_the_stage_scored_the_pair(run_dir: Path, tmp_path: Path) -> None:
    test = cedar_and(synthetic_writers=30, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["test"]
    first, second, same = sslhv_pairs(np.asarray(test.labels), seed=RECIPE["seed"])
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for k in (int(np.argmax(same)), int(np.argmin(same))):  # a same-writer pair, then a different-writer one
        files = []
        for index in (first[k], second[k]):
            files.append(str(tmp_path / f"word{index}.png"))
            Image.fromarray(255 - test.images[index, 0].numpy()).save(files[-1])  # dark ink on white, as scanned
        for stage in ("fusion", "fusion_mean", "fused_again"):  # logistic, mean, and a fusion of a fusion
            result = CliRunner().invoke(main, ["verify", str(run_dir), *files, "--stage", stage])
            assert result.exit_code == 0, result.output
            score, limit = map(float, re.match(r"score (\S+)  threshold (\S+)  → ", result.output).groups())
            (saved_pairs, threshold), = load_pair_scores(run_dir / "stages" / stage / "test_pair_scores.npz").values()
            assert score == pytest.approx(saved_pairs.scores[k], abs=5e-5)  # printed to 4 places
            assert limit == pytest.approx(threshold, abs=5e-5)
            log10 = float(re.search(r"^LR \S+ \(log10 (\S+)\)", result.output, re.M).group(1))
            calibration = Calibration(**metrics[stage]["verification"]["fused"]["calibration"])
            assert log10 == pytest.approx(float(calibration.log_lr(score)) / math.log(10), abs=0.01)
            members = dict(re.findall(r"(\S+/\S+) (-?[\d.]+)", result.output.splitlines()[-1]))
            for member in metrics[stage]["fusion"]["members"]:
                found = load_pair_scores(run_dir / "stages" / member.split("/")[0] / "test_pair_scores.npz")
                assert float(members[member]) == pytest.approx(found[member.split("/")[1]][0].scores[k], abs=5e-5)
    refused = CliRunner().invoke(main, ["verify", str(run_dir), *files, "--stage", "fusion", "--verifier", "wccn_pair"])
    assert refused.exit_code == 2 and refused.stderr == ("error: stage 'fusion' fuses its members into one verifier, "
                                                         "'fused'; drop --verifier wccn_pair\n")
    unknown = CliRunner().invoke(main, ["verify", str(run_dir), *files, "--stage", "fuson"])
    assert unknown.exit_code == 2 and unknown.stderr == (
        f"error: {run_dir}: no evaluation stage 'fuson'; have eval_first, eval_second; "
        "score fusions: fusion, fusion_mean, fused_again, fusion_space, nested_space\n")


def verifier_cosines(run_dir: Path, stage: str, verifier: str, features: np.ndarray) -> np.ndarray:
    """The pairwise scores of a saved cosine verifier, ``cos(W(e_i − μ), W(e_j − μ))``, from its buffers."""
    state = load_checkpoint(run_dir / "stages" / stage / "verifiers.pt")[verifier]["state"]
    space = features.astype(np.float64) - state["mean"].numpy()
    space = space @ state["transform"].numpy() if "transform" in state else space
    unit = space / np.linalg.norm(space, axis=1, keepdims=True)
    return unit @ unit.T


def fused_scores(run_dir: Path, metrics: dict, stage: str, features: Callable[[str], np.ndarray]) -> np.ndarray:
    """Fusion ``stage``'s pairwise scores of the images whose features each evaluation stage gives (``features``):
    its members' :func:`verifier_cosines`, or a nested fusion's own fused scores, weighted, plus the offset."""
    fusion = metrics[stage]["fusion"]
    scores = fusion["offset"]
    for member, weight in fusion["weights"].items():
        member_stage, verifier = member.split("/")
        if "fusion" in metrics[member_stage]:
            scores = scores + weight * fused_scores(run_dir, metrics, member_stage, features)
        else:
            scores = scores + weight * verifier_cosines(run_dir, member_stage, verifier, features(member_stage))
    return scores


@pytest.mark.parametrize("stage", ["fusion_space", "nested_space"])
def test_retrieval_in_the_fused_space_ranks_the_test_images_by_the_fused_score(run_dir: Path, stage: str) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    labels = np.load(run_dir / "stages" / "eval_first" / "test_labels.npy")
    scores = fused_scores(run_dir, metrics, stage,
                          lambda member: np.load(run_dir / "stages" / member / "test_embeddings.npy"))
    first, second, _ = sslhv_pairs(labels, seed=RECIPE["seed"])
    (pairs, _), = load_pair_scores(run_dir / "stages" / stage / "test_pair_scores.npz").values()
    np.testing.assert_allclose(scores[first, second], pairs.scores, rtol=0, atol=1e-5)  # the fused scores, every pair
    np.fill_diagonal(scores, -np.inf)
    found = metrics[stage]
    assert found["space"] == "fused"
    assert found["retrieval"]["precision_at_1"] == pytest.approx(np.mean(labels[scores.argmax(1)] == labels))
    report = (run_dir / "report.md").read_text()
    assert f"Retrieval among the test writers in the fused space: precision@1 " \
           f"{found['retrieval']['precision_at_1']:.4f}" in report


def test_retrieval_needs_non_negative_weights_and_members_with_an_embedding_space(copied: Path) -> None:
    outputs = copied / "stages" / "fusion_mean" / "outputs.json"
    recorded = json.loads(outputs.read_text())
    recorded["metrics"]["fusion"]["weights"]["eval_second/cosine_pair"] = -0.25
    outputs.write_text(json.dumps(recorded))
    with pytest.raises(HvkitError, match=r"^stage 'nested_space': evaluators: stage 'fusion_mean' weighs "
                                         r"eval_second/cosine_pair by -0.25 < 0: a negative weight has no space of "
                                         r"inner products \(fit: mean weighs every member > 0\)$"):
        reevaluate(copied, ["nested_space"], [], device="cpu", console=lambda _: None)
    with pytest.raises(HvkitError, match=r"^stage 'fusion_space': evaluators: eval_second/sslhv_pair scores pairs "
                                         r"without an embedding space; the fused space joins cosine verifiers "
                                         r"\(cosine_pair, wccn_pair, pcaw_pair, correlation_pair\)$"):
        reevaluate(copied, ["eval_second", "fusion_space"],
                   ["stages.eval_second.verifiers=[cosine_pair,wccn_pair,sslhv_pair]",
                    "stages.fusion_space.members=[eval_first/wccn_pair,eval_second/sslhv_pair]"],
                   device="cpu", console=lambda _: None)


def fusion_recipe(tmp_path: Path, members) -> Path:
    stages = {k: RECIPE["stages"][k] for k in ("first", "eval_first", "second", "eval_second")}
    recipe = {**RECIPE, "stages": {**stages, "fusion": {"stage": "score_fusion", "members": members}}}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


@pytest.mark.parametrize("members, where, message", [
    (["eval_first/wccn_pair"], "members",
     "members must name at least two different verifiers as STAGE/VERIFIER, got ['eval_first/wccn_pair']"),
    (["eval_first/wccn_pair", "eval_first/wccn_pair"], "members", "members must name at least two different "
     "verifiers as STAGE/VERIFIER, got ['eval_first/wccn_pair', 'eval_first/wccn_pair']"),
    (["eval_first", "eval_second/wccn_pair"], "members.0",
     "member 'eval_first' must read STAGE/VERIFIER, e.g. evaluate/wccn_pair"),
    (["eval_first/wccn_pair", "eval_secnd/wccn_pair"], "members.1",
     "'eval_secnd/wccn_pair': 'eval_secnd' is not an earlier stage; did you mean 'eval_second', 'second', "
     "'eval_first'?"),
    (["eval_first/wccn_pair", "fusion/fused"], "members.1",
     "'fusion/fused': 'fusion' is not an earlier stage; did you mean 'second'?"),  # itself: not earlier
    (["first/wccn_pair", "eval_second/wccn_pair"], "members.0",
     "'first/wccn_pair': stage 'first' (metric_train) saves no pair scores; name an evaluate (or score_fusion) stage"),
    (["eval_first/wccn_pair", "eval_second/wcn_pair"], "members.1",
     "'eval_second/wcn_pair': stage 'eval_second' has no verifier 'wcn_pair'; it has cosine_pair, wccn_pair"),
])
def test_bad_members_are_one_line_errors_of_hvkit_validate(tmp_path: Path, members, where, message) -> None:
    path = fusion_recipe(tmp_path, members)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {path}:stages.fusion.{where}: {message}\n"


def test_the_constructor_refuses_what_validation_refuses() -> None:
    for members in (["eval_first/wccn_pair"], ["eval_first/wccn_pair"] * 2, ["eval_first", "eval_second/wccn_pair"]):
        with pytest.raises(ValueError):
            ScoreFusion(members)


@pytest.fixture
def copied(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of the run, whose member files a test may tamper with before re-running ``fusion``."""
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def rewrite(path: Path, **changes) -> None:
    with np.load(path) as data:
        arrays = {**{k: data[k] for k in data.files}, **changes}
    np.savez(path, **arrays)


@pytest.mark.parametrize("part", ["val", "test"])
def test_members_that_scored_different_pairs_are_refused(copied: Path, part: str) -> None:
    rewrite(copied / "stages" / "eval_second" / PAIR_SCORE_FILES[part], pairs_digest=np.array("another split"))
    with pytest.raises(HvkitError, match=rf"^stage 'fusion': members 'eval_first/wccn_pair' and "
                                         rf"'eval_second/wccn_pair' scored different {part} pairs \(another split, "
                                         r"data.seed or dataset\); fuse evaluations of the same pairs$"):
        reevaluate(copied, ["fusion"], [], device="cpu", console=lambda _: None)


def test_pairs_without_a_digest_are_compared_by_their_labels(copied: Path) -> None:
    path = copied / "stages" / "eval_second" / PAIR_SCORE_FILES["test"]
    with np.load(path) as data:
        arrays = {k: data[k] for k in data.files if k != "pairs_digest"}  # as saved before hvkit had digests
    arrays["same"] = ~arrays["same"]
    np.savez(path, **arrays)
    with pytest.raises(HvkitError, match=r"'eval_second/wccn_pair' scored different test pairs"):
        reevaluate(copied, ["fusion"], [], device="cpu", console=lambda _: None)


def test_an_evaluation_saved_before_val_scores_says_to_rerun_it(copied: Path) -> None:
    outputs = copied / "stages" / "eval_second" / "outputs.json"
    found = json.loads(outputs.read_text())
    del found["val_pair_scores"]
    outputs.write_text(json.dumps(found))
    with pytest.raises(HvkitError, match=rf"^stage 'fusion': member 'eval_second/wccn_pair': stage 'eval_second' saved "
                                         rf"no val pair scores \(it ran without val writers, or before hvkit saved val "
                                         rf"scores: re-run it with hvkit eval {copied} --stage eval_second\)$"):
        reevaluate(copied, ["fusion"], [], device="cpu", console=lambda _: None)


def test_an_evaluation_without_val_writers_saves_no_val_scores_and_cannot_be_fused(tmp_path: Path) -> None:
    recipe = {**RECIPE, "data": {**RECIPE["data"], "val_fraction": 0.0},
              "stages": {"first": TRAIN, "eval_first": {**EVAL, "model_from": "first", "protocol": "sslhv"},
                         "fusion": {"stage": "score_fusion",
                                    "members": ["eval_first/cosine_pair", "eval_first/wccn_pair"]}}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))
    with pytest.raises(HvkitError, match=r"^stage 'fusion': member 'eval_first/cosine_pair': stage 'eval_first' "
                                         r"saved no val pair scores \(it ran without val writers"):
        run(tmp_path / "recipe.yaml", [], run_dir=tmp_path / "run", device="cpu", console=lambda _: None)
    outputs = json.loads((tmp_path / "run" / "stages" / "eval_first" / "outputs.json").read_text())
    assert outputs["val_pair_scores"] is None and outputs["pair_scores"] == "stages/eval_first/test_pair_scores.npz"
    assert not (tmp_path / "run" / "stages" / "eval_first" / "val_pair_scores.npz").exists()


def test_members_with_affinely_dependent_scores_are_refused(copied: Path) -> None:
    path = copied / "stages" / "eval_second" / PAIR_SCORE_FILES["val"]
    first = load_pair_scores(copied / "stages" / "eval_first" / PAIR_SCORE_FILES["val"])["wccn_pair"][0]
    rewrite(path, **{"score:wccn_pair": 3 * first.scores - 1})
    with pytest.raises(HvkitError, match=r"^stage 'fusion': members 0: eval_first/wccn_pair, 1: eval_second/wccn_pair, "
                                         r"2: eval_first/cosine_pair: fusion: score column 1 is an affine function of "
                                         r"column 0 on these pairs"):
        reevaluate(copied, ["fusion"], [], device="cpu", console=lambda _: None)
