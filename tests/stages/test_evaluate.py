"""The evaluate stage fits verifiers on the labelled writers and centres (and PCA-whitens) on every training image."""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hvkit.cli import main
from hvkit.engine import load_checkpoint, save_checkpoint
from hvkit.engine.context import build
from hvkit.errors import HvkitError
from hvkit.evaluation import Calibration, cllr, fit_calibration, min_cllr
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import labelled_writers, sslhv_pairs
from hvkit_plugins.evaluators.linear_probe import writer_split
from hvkit_plugins.heads.cosine_pair import scatter_whitening, within_class_whitening
from hvkit_plugins.stages.encoder import embed, load_encoder
from hvkit_plugins.stages.evaluate import load_pair_scores, load_pairs_digest, pairs_digest
from hvkit_plugins.stages.pair_training import pair_probability

RECIPE = {
    "name": "tiny_evaluate", "seed": 1, "device": "cpu",
    "data": {"name": "cedar_and", "synthetic_writers": 40, "synthetic_samples_per_writer": 6},
    "model": {"backbone": {"name": "small_cnn", "width": 8, "depth": 2, "embedding_dim": 16}},
    "stages": {
        "train": {"stage": "metric_train", "loss": "supcon", "head": None, "transform": None, "batch_size": 32,
                  "label_fraction": 0.5,
                  "train": {"epochs": 1, "max_steps": 2, "amp": False, "optimizer": {"name": "SGD", "lr": 0.01}}},
        "evaluate": {"stage": "evaluate", "model_from": "train", "label_fraction": 0.5, "plots": False,
                     "verifiers": ["cosine_pair", {"name": "wccn_pair", "shrinkage": 0.2}, "pcaw_pair"],
                     "evaluators": ["verification"]},
    },
}


def test_verifiers_centre_on_all_training_images_and_whiten_on_the_labelled(tmp_path: Path) -> None:
    run_dir = run_recipe_text(yaml.safe_dump(RECIPE, sort_keys=False), tmp_path)
    fitted = load_checkpoint(run_dir / "stages" / "evaluate" / "verifiers.pt")
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    train = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["train"]
    labelled = labelled_writers(train, 0.5)
    everything = embed(encoder, train.images, torch.device("cpu"))
    known = embed(encoder, labelled.images, torch.device("cpu"))
    assert len(labelled) < len(train)
    for name in ("cosine_pair", "wccn_pair", "pcaw_pair"):
        torch.testing.assert_close(fitted[name]["state"]["mean"], everything.double().mean(0).float())
    expected = within_class_whitening(known, torch.as_tensor(np.asarray(labelled.labels)), 0.2)
    torch.testing.assert_close(fitted["wccn_pair"]["state"]["transform"], expected, rtol=1e-4, atol=1e-5)
    centred = everything.double() - everything.double().mean(0)
    expected = scatter_whitening(centred.T @ centred / len(centred), 0.01, 0.5, "flat")
    torch.testing.assert_close(fitted["pcaw_pair"]["state"]["transform"], expected, rtol=1e-4, atol=1e-5)
    assert set(fitted["cosine_pair"]["state"]) == {"mean"}


def test_the_clean_protocol_without_validation_writers_is_a_one_line_error(tmp_path: Path) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["data"]["val_fraction"] = 0.0
    with pytest.raises(HvkitError, match=r"^stage 'evaluate': the clean protocol needs a 'val' split of writers$"):
        run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)


def _pair_auc(embeddings: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of the cosine over every unordered test pair: P(s_same > s_diff) + P(tie) / 2, in float64."""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    i, j = np.triu_indices(len(x), k=1)
    scores, same = (x[i] * x[j]).sum(1), labels[i] == labels[j]
    diff = scores[same][:, None] - scores[~same][None, :]
    return float((diff > 0).mean() + (diff == 0).mean() / 2)


def test_space_scores_all_pairs_as_the_named_verifier(tmp_path: Path) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["space"] = "wccn_pair"
    recipe["stages"]["evaluate"]["evaluators"] = ["verification", "retrieval", "knn_probe", "linear_probe"]
    run_dir = run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())["evaluate"]
    fitted = load_checkpoint(run_dir / "stages" / "evaluate" / "verifiers.pt")["wccn_pair"]["state"]
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    test = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["test"]
    raw = embed(encoder, test.images, torch.device("cpu")).double().numpy()
    seen = (raw - fitted["mean"].double().numpy()) @ fitted["transform"].double().numpy()
    labels = np.asarray(test.labels)
    assert metrics["space"] == "wccn_pair"
    auc = metrics["verification"]["all_pairs"]["roc_auc"]
    assert abs(auc - _pair_auc(seen, labels)) < 1e-4
    assert abs(auc - _pair_auc(raw, labels)) > 1e-2
    np.testing.assert_allclose(np.load(run_dir / "stages" / "evaluate" / "test_embeddings.npy"), raw, rtol=1e-5,
                               atol=1e-6)
    unit = seen / np.linalg.norm(seen, axis=1, keepdims=True)
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    assert metrics["retrieval"]["precision_at_1"] == pytest.approx((labels[similarity.argmax(1)] == labels).mean())
    votes = np.stack([np.bincount(row, minlength=labels.max() + 1) for row in labels[np.argsort(-similarity)[:, :5]]])
    assert metrics["knn_probe"]["accuracy"] == pytest.approx((votes.argmax(1) == labels).mean())
    train, held_out = writer_split(labels, 0.5, 0)
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(unit[train], labels[train])
    identified = probe.predict(unit[held_out]) == labels[held_out]
    assert metrics["linear_probe"]["accuracy"] == pytest.approx(identified.mean())
    report = (run_dir / "report.md").read_text()
    assert f"| all_pairs in the wccn_pair space | — | {auc:.4f} |" in report
    found = metrics["retrieval"]
    assert (f"Retrieval among the test writers in the wccn_pair space: precision@1 {found['precision_at_1']:.4f}, "
            f"MAP@R {found['map_at_r']:.4f}, hard top-2 {found['hard_at_2']:.4f}, hard top-3 {found['hard_at_3']:.4f}."
            ) in report
    probes = metrics["knn_probe"]["accuracy"], metrics["linear_probe"]["accuracy"]
    assert (f"Writer identification among the test writers in the wccn_pair space: k-NN vote (leave one out) "
            f"{probes[0]:.4f}, linear probe {probes[1]:.4f}.") in report


@pytest.mark.parametrize("space, message", [
    ("wccn", r"space: 'wccn' is not one of this stage's verifiers \['cosine_pair', 'wccn_pair', 'pcaw_pair'\]"),
    ("sslhv_pair", r"space: verifier 'sslhv_pair' scores pairs without an embedding space of its own; "
                   r"name a cosine verifier \(cosine_pair, wccn_pair, pcaw_pair\)")])
def test_space_names_a_cosine_verifier_of_the_stage(tmp_path: Path, space: str, message: str) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["space"] = space
    if space == "sslhv_pair":
        recipe["stages"]["evaluate"]["verifiers"] = ["cosine_pair", "wccn_pair", "pcaw_pair", "sslhv_pair"]
    with pytest.raises(HvkitError, match=rf"^stage 'evaluate': {message}$"):
        run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)


def test_likelihood_ratios_calibrated_on_val_reach_metrics_verifiers_and_verify(tmp_path: Path) -> None:
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["plots"] = True
    recipe["stages"]["hog"] = {"stage": "evaluate", "features": "hog", "label_fraction": 0.5, "plots": False,
                               "verifiers": ["cosine_pair"], "evaluators": ["verification"]}  # last, no encoder
    run_dir = run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)
    stage_dir = run_dir / "stages" / "evaluate"
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())["evaluate"]["verification"]
    fitted = load_checkpoint(stage_dir / "verifiers.pt")
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    val = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["val"]
    val_emb = embed(encoder, val.images, torch.device("cpu"))
    i, j, val_same = sslhv_pairs(np.asarray(val.labels), seed=RECIPE["seed"])
    test_pairs = load_pair_scores(stage_dir / "test_pair_scores.npz")
    val_pairs = load_pair_scores(stage_dir / "val_pair_scores.npz")  # what score_fusion fits on
    assert load_pairs_digest(stage_dir / "val_pair_scores.npz") == pairs_digest(val, i, j)
    outputs = json.loads((stage_dir / "outputs.json").read_text())
    assert (outputs["pair_scores"], outputs["val_pair_scores"]) == ("stages/evaluate/test_pair_scores.npz",
                                                                    "stages/evaluate/val_pair_scores.npz")
    for name in ("cosine_pair", "wccn_pair", "pcaw_pair"):
        found = metrics[name]
        assert fitted[name]["calibration"] == found["calibration"]
        head = build(get_registry(), "head", fitted[name]["spec"], in_dim=16)
        head.load_state_dict(fitted[name]["state"])
        val_scores = pair_probability(head, val_emb, i, j)
        np.testing.assert_allclose(val_pairs[name][0].scores, val_scores, rtol=1e-6, atol=1e-6)
        np.testing.assert_array_equal(val_pairs[name][0].same, val_same.astype(bool))
        np.testing.assert_array_equal(val_pairs[name][0].writers, np.asarray(val.labels)[i])
        assert val_pairs[name][1] == test_pairs[name][1] == found["threshold"]
        refit = fit_calibration(val_scores, val_same.astype(bool))
        assert (refit.slope, refit.offset) == pytest.approx(tuple(found["calibration"].values()), rel=1e-5, abs=1e-6)
        test = test_pairs[name][0]
        log_lr = Calibration(**found["calibration"]).log_lr(test.scores)
        assert found["cllr"] == pytest.approx(cllr(log_lr, test.same), abs=1e-12)
        assert found["min_cllr"] == pytest.approx(min_cllr(test.scores, test.same), abs=1e-12)
        assert found["cllr_cal"] == pytest.approx(found["cllr"] - found["min_cllr"], abs=1e-12)
        assert (stage_dir / f"verification_{name}_tippett.png").is_file()
    cells = [f"{metrics['wccn_pair'][key]:.4f}" for key in ("cllr", "min_cllr")]
    assert re.search(rf"\| wccn_pair \|.*\| {cells[0]} \([^)]*\) \| {cells[1]} \([^)]*\) \|$",
                     (run_dir / "report.md").read_text(), re.M)  # Cllr and min Cllr, each with its interval

    test = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["test"]
    files = []
    for k in (0, 7):
        files.append(tmp_path / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(files[-1])  # dark ink on white, as scanned
    command = ["verify", str(run_dir), *map(str, files), "--verifier", "wccn_pair"]
    result = CliRunner().invoke(main, command)  # the last stage with an encoder: evaluate, not hog
    assert result.exit_code == 0, result.output
    score = float(re.match(r"score (\S+)", result.output).group(1))
    lr, log10 = map(float, re.search(r"^LR (\S+) \(log10 (\S+)\): the score is ", result.output, re.M).groups())
    calibration = Calibration(**fitted["wccn_pair"]["calibration"])
    expected = float(calibration.log_lr(score)) / math.log(10)
    assert abs(log10 - expected) <= 0.005 + abs(calibration.slope) * 5e-5 / math.log(10)  # printed to 2 and 4 places
    assert lr == pytest.approx(10 ** log10, rel=0.02)

    for entry in fitted.values():  # a run saved before hvkit calibrated: no calibration in verifiers.pt
        del entry["calibration"]
    save_checkpoint(stage_dir / "verifiers.pt", fitted)
    old = CliRunner().invoke(main, command)
    assert old.exit_code == 0, old.output
    assert old.output.startswith(f"score {score:.4f}  threshold ") and "LR" not in old.output
