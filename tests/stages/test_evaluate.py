"""The evaluate stage fits verifiers on the labelled writers and centres (and PCA-whitens) on every training image."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.heads.cosine_pair import scatter_whitening, within_class_whitening
from hvkit_plugins.stages.encoder import embed, load_encoder

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
    recipe["stages"]["evaluate"]["evaluators"] = ["verification", "retrieval"]
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
    report = (run_dir / "report.md").read_text()
    assert f"| all_pairs in the wccn_pair space | — | {auc:.4f} |" in report
    found = metrics["retrieval"]
    assert (f"Retrieval among the test writers in the wccn_pair space: precision@1 {found['precision_at_1']:.4f}, "
            f"MAP@R {found['map_at_r']:.4f}.") in report


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
