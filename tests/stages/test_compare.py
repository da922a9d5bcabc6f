"""Saved test-pair scores and ``hvkit compare``: a paired writer bootstrap between two verifiers."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.evaluation import EvalData, PairSet, RocCounts, evaluate
from hvkit.evaluation.bootstrap import paired_writer_bootstrap, seeded_paired_bootstrap
from hvkit.pipeline import run
from hvkit_plugins.evaluators.open_set import OPEN_SET_SCORES, OpenSet, Probes, paired_probes_bootstrap
from hvkit_plugins.evaluators.set_verification import SET_SCORES, SetVerification
from hvkit_plugins.stages.evaluate import PAIR_SCORES, load_pair_scores

TRAIN = {"stage": "metric_train", "loss": "multi_similarity", "head": None, "transform": None, "batch_size": 24,
         "label_fraction": 0.5, "train": {"epochs": 1, "max_steps": 2, "amp": False}}
EVAL = {"stage": "evaluate", "label_fraction": 0.5, "plots": False, "verifiers": ["cosine_pair", "wccn_pair"],
        "evaluators": [{"name": "verification", "all_pairs": False, "bootstrap": 50}]}
RECIPE = {
    "name": "tiny_compare", "seed": 4, "device": "cpu",
    "data": {"name": "cedar_and", "synthetic_writers": 30, "synthetic_samples_per_writer": 6},
    "model": {"backbone": {"name": "small_cnn", "width": 8, "depth": 2, "embedding_dim": 12}},
    "stages": {"first": TRAIN, "eval_first": {**EVAL, "model_from": "first"},
               "second": {**TRAIN, "train": {**TRAIN["train"], "max_steps": 4}},
               "eval_second": {**EVAL, "model_from": "second", "evaluators": [
                   *EVAL["evaluators"], "knn_probe", {"name": "set_verification", "sizes": [1, 2], "bootstrap": 0},
                   {"name": "open_set", "bootstrap": 0}]}},
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare")
    (root / "recipe.yaml").write_text(yaml.safe_dump(RECIPE, sort_keys=False))
    return run(root / "recipe.yaml", [], run_dir=root / "run", device="cpu", console=lambda _: None)


def invoke(*args: str):
    return CliRunner().invoke(main, ["compare", *map(str, args)])


def test_saved_scores_reproduce_the_stage_metrics(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())["eval_first"]["verification"]
    saved = load_pair_scores(run_dir / "stages" / "eval_first" / PAIR_SCORES)
    assert sorted(saved) == ["cosine_pair", "wccn_pair"]
    for name, (pairs, threshold) in saved.items():
        assert threshold == metrics[name]["threshold"]
        assert RocCounts.from_scores(pairs.scores, pairs.same).auc() == metrics[name]["roc_auc"]
        assert np.mean((pairs.scores >= threshold) == pairs.same) == pytest.approx(metrics[name]["accuracy"])
        assert len(pairs.scores) == metrics[name]["pairs"]


def metrics_of(run_dir: Path, stage: str, verifier: str) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())[stage]["verification"][verifier]


def calibrated(run_dir: Path, stage: str, verifier: str) -> tuple:
    """(test pairs, val threshold, log LRs by the evaluator's val calibration) of one verifier."""
    pairs, threshold = load_pair_scores(run_dir / "stages" / stage / PAIR_SCORES)[verifier]
    fit = json.loads((run_dir / "metrics.json").read_text())[stage]["verification"][verifier]["calibration"]
    return pairs, threshold, fit["slope"] * pairs.scores + fit["offset"]


def test_compare_prints_the_paired_bootstrap_of_two_stages(run_dir: Path) -> None:
    result = invoke(run_dir, "eval_second/wccn_pair", "eval_first/cosine_pair", "--resamples", 200, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    (a, ta, la), (b, tb, lb) = (calibrated(run_dir, s, v)
                                for s, v in (("eval_second", "wccn_pair"), ("eval_first", "cosine_pair")))
    assert out["a_minus_b"] == seeded_paired_bootstrap([(a, ta, la)], [(b, tb, lb)], 200)
    def uncalibrated(found: dict) -> dict:  # what needs no calibration: min Cllr stays, Cllr goes
        return {k: v for k, v in found.items() if "cllr" not in k or "min_cllr" in k}

    assert uncalibrated(out["a_minus_b"]) == paired_writer_bootstrap(a, b, ta, tb, 200)
    assert out["a"]["min_cllr"] == pytest.approx(metrics_of(run_dir, "eval_second", "wccn_pair")["min_cllr"], abs=1e-12)
    assert out["a"]["roc_auc"] == RocCounts.from_scores(a.scores, a.same).auc()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "min_cllr" in out["a_minus_b"] and f"min_cllr {out['a']['min_cllr'] - out['b']['min_cllr']:+.4f}" in \
        invoke(run_dir, "eval_second/wccn_pair", "eval_first/cosine_pair", "--resamples", 20).stdout
    assert out["a"]["cllr"] == pytest.approx(metrics["eval_second"]["verification"]["wccn_pair"]["cllr"], rel=1e-12)
    assert out["b"]["cllr"] == pytest.approx(metrics["eval_first"]["verification"]["cosine_pair"]["cllr"], rel=1e-12)
    low, high = out["a_minus_b"]["roc_auc"]
    assert low <= out["a"]["roc_auc"] - out["b"]["roc_auc"] <= high
    text = invoke(run_dir, "eval_second/wccn_pair", "eval_first/cosine_pair", "--resamples", 200)
    assert text.exit_code == 0 and "A − B, 95% interval over 200 draws of the test writers" in text.stdout
    assert f"{out['a']['roc_auc'] - out['b']['roc_auc']:+.4f}" in text.stdout
    assert f"cllr     {out['a']['cllr'] - out['b']['cllr']:+.4f}" in text.stdout


def test_a_verifier_without_a_saved_calibration_is_compared_without_cllr(run_dir: Path, tmp_path: Path) -> None:
    copied = Path(shutil.copytree(run_dir, tmp_path / "run"))
    metrics = json.loads((copied / "metrics.json").read_text())
    del metrics["eval_first"]["verification"]["cosine_pair"]["calibration"]  # as written before hvkit had Cllr
    (copied / "metrics.json").write_text(json.dumps(metrics))
    out = json.loads(invoke(copied, "eval_second/wccn_pair", "eval_first/cosine_pair", "--json",
                            "--resamples", 20).stdout)
    assert "cllr" in out["a"] and "cllr" not in out["b"]
    assert not {"cllr", "share_a_not_better_cllr"} & set(out["a_minus_b"])
    assert {"roc_auc", "min_cllr"} <= set(out["a_minus_b"])  # min Cllr needs no calibration


def test_paired_interval_is_narrower_than_either_own_interval(run_dir: Path) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())["eval_first"]["verification"]
    result = json.loads(invoke(run_dir, "eval_first/wccn_pair", "eval_first/cosine_pair", "--against", run_dir,
                               "--json", "--resamples", 50).stdout)
    paired = result["a_minus_b"]["roc_auc"]
    own = [metrics[v]["ci"]["roc_auc"] for v in ("wccn_pair", "cosine_pair")]
    assert paired[1] - paired[0] < min(high - low for low, high in own)


@pytest.mark.parametrize("args, message", [
    (("eval_first", "eval_second/cosine_pair"), "must read STAGE/VERIFIER"),
    (("eval_first/sslhv_pair", "eval_second/cosine_pair"), "no verifier 'sslhv_pair'; it holds cosine_pair, wccn_pair"),
    (("first/cosine_pair", "eval_second/cosine_pair"), "no test pair scores"),
])
def test_bad_references_are_one_line_errors(run_dir: Path, args, message) -> None:
    result = invoke(run_dir, *args)
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_seed_runs_share_the_split_through_data_seed_and_widen_the_comparison(run_dir: Path, tmp_path: Path) -> None:
    held = {**RECIPE, "seed": 5, "data": {**RECIPE["data"], "seed": RECIPE["seed"]}}
    (tmp_path / "held.yaml").write_text(yaml.safe_dump(held, sort_keys=False))
    other = run(tmp_path / "held.yaml", [], run_dir=tmp_path / "held", device="cpu", console=lambda _: None)
    first, second = (load_pair_scores(d / "stages" / "eval_second" / PAIR_SCORES)["wccn_pair"]
                     for d in (run_dir, other))
    assert np.array_equal(first[0].same, second[0].same) and not np.array_equal(first[0].scores, second[0].scores)
    result = invoke(run_dir, "eval_second/wccn_pair", "eval_first/cosine_pair", "--seed-run", other,
                    "--resamples", 100, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    a_runs = [calibrated(d, "eval_second", "wccn_pair") for d in (run_dir, other)]
    b_runs = [calibrated(d, "eval_first", "cosine_pair") for d in (run_dir, other)]
    assert out["a_minus_b"] == seeded_paired_bootstrap(a_runs, b_runs, 100)
    assert out["a"]["runs"] == 2 and out["a"]["roc_auc"] == pytest.approx(
        np.mean([RocCounts.from_scores(p.scores, p.same).auc() for p, _ in (first, second)]))
    text = invoke(run_dir, "eval_second/wccn_pair", "eval_first/cosine_pair", "--seed-run", other, "--resamples", 100)
    assert "(mean of 2 runs)" in text.stdout and "draws of the test writers and the runs" in text.stdout
    (tmp_path / "sweep").mkdir()  # a seed sweep's folder: its runs in name order
    (tmp_path / "sweep" / "seed=4").symlink_to(run_dir)
    (tmp_path / "sweep" / "seed=5").symlink_to(other)
    (tmp_path / "sweep" / "summary.json").write_text("{}")
    for args in ([tmp_path / "sweep"], [run_dir, "--seed-run", other, "--against", tmp_path / "sweep"]):
        folder = invoke(args[0], "eval_second/wccn_pair", "eval_first/cosine_pair", *args[1:], "--resamples", 100,
                        "--json")
        assert folder.exit_code == 0, folder.output
        assert json.loads(folder.stdout) == out

    moved = {**RECIPE, "seed": 5}  # without data.seed the split follows the training seed
    (tmp_path / "moved.yaml").write_text(yaml.safe_dump(moved, sort_keys=False))
    elsewhere = run(tmp_path / "moved.yaml", [], run_dir=tmp_path / "moved", device="cpu", console=lambda _: None)
    refused = invoke(run_dir, "eval_first/cosine_pair", "eval_first/cosine_pair", "--against", elsewhere)
    assert refused.exit_code == 2 and "scored different test pairs" in refused.stderr


def test_status_json_gives_each_verifier_s_headline(run_dir: Path) -> None:
    result = CliRunner().invoke(main, ["status", "--json", str(run_dir)])
    assert result.exit_code == 0, result.output
    (state,) = json.loads(result.stdout)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert state["synthetic"] is True and state["stages_left"] == 0 and state["running"] is None
    assert state["results"] == [
        {"stage": stage, "verifier": verifier, **{k: metrics[stage]["verification"][verifier][k]
                                                  for k in ("accuracy", "roc_auc", "eer")}}
        for stage in ("eval_first", "eval_second") for verifier in ("cosine_pair", "wccn_pair")]
    assert state["identification"] == [
        {"stage": "eval_second", "knn_probe": metrics["eval_second"]["knn_probe"]["accuracy"], "linear_probe": None}]
    found = metrics["eval_second"]["set_verification"]
    assert state["sets"] == [{"stage": "eval_second", "sizes": {
        str(k): {key: found[f"k{k}"][key] for key in ("accuracy", "roc_auc", "eer", "writers", "trials")}
        for k in (1, 2)}}] and found["k2"]["trials"] > 0
    open_set = metrics["eval_second"]["open_set"]
    assert state["open_set"] == [{"stage": "eval_second", **open_set}] and open_set["known_probes"] > 0


def evaluated_run(root: Path, models: dict[str, int], evaluator: object, documents: bool = False) -> Path:
    """A run directory holding only what ``compare`` reads of ``evaluator`` (set_verification, open_set): each
    stage's saved scores and metrics, its embeddings drawn around the same writers' centres with ``models[stage]``
    as the seed."""
    labels = np.repeat(np.arange(40), 6)
    centres = np.random.default_rng(0).standard_normal((40, 8))
    metrics = {}
    for stage, seed in models.items():
        noise = np.random.default_rng(seed).standard_normal((len(labels), 8))
        data = EvalData((centres[labels] + 1.5 * noise).astype(np.float32), labels,
                        val_embeddings=(centres[labels] + 1.5 * noise[::-1]).astype(np.float32), val_labels=labels,
                        out_dir=root / "stages" / stage, documents=labels * 3 + np.arange(len(labels)) % 3 if documents
                        else None)
        data.out_dir.mkdir(parents=True, exist_ok=True)
        metrics[stage] = evaluate([evaluator], data)
    (root / "metrics.json").write_text(json.dumps(metrics))
    return root


def set_run(root: Path, models: dict[str, int], documents: bool = False) -> Path:
    return evaluated_run(root, models, SetVerification(sizes=[1, 2], bootstrap=0), documents)


def test_compare_reads_the_k_against_k_trials_of_two_stages(tmp_path: Path) -> None:
    run_dir = set_run(tmp_path / "run", {"a": 1, "b": 2})
    result = invoke(run_dir, "a/set:2", "b/set:2", "--resamples", 100, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    loaded = []
    for stage in ("a", "b"):
        saved = np.load(run_dir / "stages" / stage / SET_SCORES)
        found = json.loads((run_dir / "metrics.json").read_text())[stage]["set_verification"]["k2"]
        pairs = PairSet(saved["k2:scores"], saved["k2:same"], saved["k2:writers"])
        assert RocCounts.from_scores(pairs.scores, pairs.same).auc() == found["roc_auc"]
        fit = found["calibration"]
        loaded.append((pairs, found["threshold"], fit["slope"] * pairs.scores + fit["offset"]))
    assert out["a_minus_b"] == seeded_paired_bootstrap(loaded[:1], loaded[1:], 100)
    assert out["a"]["accuracy"] == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["a"]["set_verification"]["k2"]["accuracy"], abs=1e-12)
    missing = invoke(run_dir, "a/set:4", "b/set:2")
    assert missing.exit_code == 2 and "no trials with '4' images a side; it holds set:1, set:2" in missing.stderr
    other = set_run(tmp_path / "other", {"b": 2}, documents=True)  # the same images, other trials
    refused = invoke(run_dir, "a/set:2", "b/set:2", "--against", other)
    assert refused.exit_code == 2 and "scored different test pairs" in refused.stderr
    absent = invoke(tmp_path / "run", "c/set:2", "b/set:2")
    assert absent.exit_code == 2 and "no k-against-k trial scores" in absent.stderr


def open_set_run(root: Path, models: dict[str, int], seed: int = 0) -> Path:
    return evaluated_run(root, models, OpenSet(bootstrap=0, seed=seed))


def test_compare_reads_the_open_set_probes_of_two_stages(tmp_path: Path) -> None:
    run_dir = open_set_run(tmp_path / "run", {"a": 1, "b": 2})
    result = invoke(run_dir, "a/open_set", "b/open_set", "--resamples", 100, "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    loaded = [Probes.load(np.load(run_dir / "stages" / stage / OPEN_SET_SCORES)) for stage in ("a", "b")]
    assert out["a_minus_b"] == paired_probes_bootstrap(loaded[:1], loaded[1:], [0.01, 0.1], 100)
    assert out["b"] == {"ref": "b/open_set", "runs": 1, **loaded[1].metrics([0.01, 0.1])}
    printed = invoke(run_dir, "a/open_set", "b/open_set", "--resamples", 100)
    assert printed.exit_code == 0, printed.output
    diff = out["a_minus_b"]
    low, high = diff["dir_at_far_0.01"]
    estimate = out["a"]["dir_at_far_0.01"] - out["b"]["dir_at_far_0.01"]
    assert (f"  dir_at_far_0.01 {estimate:+.4f} ({low:+.4f} … {high:+.4f})  share of draws where A is not better: "
            f"{diff['share_a_not_better_dir_at_far_0.01']:.3f}") in printed.stdout
    assert f"A a/open_set: rank1 {out['a']['rank1']:.4f}  detection_auc" in printed.stdout
    other = open_set_run(tmp_path / "other", {"b": 2}, seed=1)  # the same images, another gallery
    refused = invoke(run_dir, "a/open_set", "b/open_set", "--against", other)
    assert refused.exit_code == 2 and "scored different test pairs" in refused.stderr
    mixed = invoke(run_dir, "a/open_set", "b/cosine_pair")
    assert mixed.exit_code == 2 and "an open_set evaluation compares with another one only" in mixed.stderr
    absent = invoke(run_dir, "c/open_set", "b/open_set")
    assert absent.exit_code == 2 and "no open-set probe scores; 'c' ran no open_set" in absent.stderr
