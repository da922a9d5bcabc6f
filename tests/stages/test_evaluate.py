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
