"""The ensemble stage: earlier stages' encoders fused into one, used by evaluate and the commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.commands.sources import open_encoder
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.heads.cosine_pair import within_class_whitening
from hvkit_plugins.stages.encoder import embed, load_encoder
from hvkit_plugins.stages.ensemble import Ensemble

TRAIN = {"stage": "metric_train", "loss": "multi_similarity", "head": None, "transform": None, "batch_size": 24,
         "label_fraction": 0.5, "train": {"epochs": 1, "max_steps": 2, "amp": False}}
RECIPE = {
    "name": "tiny_ensemble", "seed": 2, "device": "cpu",
    "data": {"name": "cedar_and", "synthetic_writers": 30, "synthetic_samples_per_writer": 6},
    "model": {"backbone": {"name": "small_cnn", "width": 8, "depth": 2, "embedding_dim": 12}},
    "stages": {
        "first": TRAIN,
        "second": {**TRAIN, "backbone": {"name": "small_cnn", "width": 4, "depth": 3, "embedding_dim": 20}},
        "fusion": {"stage": "ensemble", "members": ["first", "second"]},
        "fused": {"stage": "evaluate", "model_from": "fusion", "label_fraction": 0.5, "plots": False,
                  "verifiers": ["cosine_pair"], "evaluators": ["verification"]},
    },
}
CPU = torch.device("cpu")


def _run(tmp_path: Path, recipe: dict) -> Path:
    return run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)


def test_fused_encoder_holds_the_members_centred_on_the_training_images(tmp_path: Path) -> None:
    run_dir = _run(tmp_path, RECIPE)
    fused, state = load_encoder(run_dir / "stages" / "fusion" / "encoder.pt", get_registry(), CPU)
    members = [load_encoder(run_dir / "stages" / s / "encoder.pt", get_registry(), CPU)[0] for s in ("first", "second")]
    assert state["backbone_spec"]["name"] == "concat" and state["head_spec"] is None
    assert [m["embedding_dim"] for m in state["backbone_spec"]["members"]] == [12, 20]
    for ours, theirs in zip(fused.backbone.members, members):
        for key, value in theirs.backbone.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, rtol=0, atol=0)
    data = cedar_and(synthetic_writers=30, synthetic_samples_per_writer=6, seed=2)
    train, test = data.splits["train"], data.splits["test"]
    raw = [embed(m, train.images, CPU) for m in members]
    torch.testing.assert_close(fused.backbone.means, torch.cat([r.mean(0) for r in raw]), rtol=1e-5, atol=1e-6)

    got = embed(fused, test.images, CPU)
    parts = [F.normalize(embed(m, test.images, CPU) - r.mean(0), dim=1) for m, r in zip(members, raw)]
    torch.testing.assert_close(got, torch.cat(parts, 1), rtol=1e-3, atol=1e-4)
    saved = np.load(run_dir / "stages" / "fused" / "test_embeddings.npy")
    assert saved.shape == (len(test), 32)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert 0.0 <= metrics["fused"]["verification"]["cosine_pair"]["accuracy"] <= 1.0
    assert metrics["fusion"] == {"members": ["first", "second"], "dims": [12, 20]}

    latest, _ = open_encoder(run_dir, None, CPU)
    assert latest.backbone.embedding_dim == 32  # the commands' default: the last stage that saved an encoder


def test_members_must_be_distinct_earlier_stages(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least two different"):
        Ensemble(["first"])
    with pytest.raises(ValueError, match="at least two different"):
        Ensemble(["first", "first"])
    bad = {**RECIPE, "stages": {**RECIPE["stages"], "fusion": {"stage": "ensemble", "members": ["first", "fused"]}}}
    with pytest.raises(HvkitError, match=r"stages\.fusion\.members\.1.*'fused' is not an earlier stage"):
        _run(tmp_path, bad)


def test_whitened_fusion_maps_each_member_by_its_own_within_writer_whitening(tmp_path: Path) -> None:
    fusion = {"stage": "ensemble", "members": ["first", "second"], "whiten": "within_class", "label_fraction": 0.5,
              "shrinkage": 0.3}
    run_dir = _run(tmp_path, {**RECIPE, "stages": {**RECIPE["stages"], "fusion": fusion}})
    fused, state = load_encoder(run_dir / "stages" / "fusion" / "encoder.pt", get_registry(), CPU)
    assert state["backbone_spec"]["whiten"] is True
    members = [load_encoder(run_dir / "stages" / s / "encoder.pt", get_registry(), CPU)[0] for s in ("first", "second")]
    data = cedar_and(synthetic_writers=30, synthetic_samples_per_writer=6, seed=2)
    train, test = data.splits["train"], data.splits["test"]
    labelled = labelled_writers(train, 0.5)
    expected = []
    for member in members:
        mean = embed(member, train.images, CPU).mean(0)
        whitening = within_class_whitening(embed(member, labelled.images, CPU), torch.as_tensor(labelled.labels), 0.3)
        expected.append(F.normalize((embed(member, test.images, CPU) - mean) @ whitening.float(), dim=1))
    torch.testing.assert_close(embed(fused, test.images, CPU), torch.cat(expected, 1), rtol=1e-3, atol=1e-4)
    transform = fused.backbone.transform
    assert transform[:12, 12:].abs().max() == 0 and transform[12:, :12].abs().max() == 0
    assert not torch.allclose(transform[:12, :12], torch.eye(12))
    with pytest.raises(ValueError, match="whiten"):
        Ensemble(["first", "second"], whiten="pca")
