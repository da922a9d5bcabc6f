"""metric_train's options: the semi-supervised term, and a pre-trained backbone loaded into a variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.stages.encoder import Encoder, load_encoder
from hvkit_plugins.stages.metric_train import MetricTrain, _WithExpander

RECIPE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [32, 32]}
    batch_size: 16
    train: {epochs: 1, max_steps: 2}
  semi:
    stage: metric_train
    init_from: pretrain
    label_fraction: 0.5
    batch_size: 16
    unlabelled_loss: vicreg
    unlabelled_weight: 0.5
    unlabelled_batch_size: 12
    train: {epochs: 3, max_steps: 3, log_every: 1}
""", name="semi", seed=3, writers=30, samples_per_writer=6, image_size=None)


def _run(tmp_path: Path, text: str) -> Path:
    """Run the recipe ``text`` quietly on the CPU; returns the run directory."""
    return run_recipe_text(text, tmp_path)


def test_step_loss_is_the_metric_loss_plus_the_weighted_view_loss(tmp_path: Path):
    run_dir = _run(tmp_path, RECIPE)
    rows = [json.loads(line) for line in (run_dir / "stages" / "semi" / "log.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert row["unlabelled"] > 0 and row["metric"] >= 0
        assert row["loss"] == pytest.approx(row["metric"] + 0.5 * row["unlabelled"], rel=1e-5)


def test_one_backbone_pass_feeds_the_head_and_the_expander():
    torch.manual_seed(0)
    encoder = Encoder(nn.Linear(6, 5), nn.Linear(5, 3))
    expander = nn.Linear(5, 4)
    labelled, unlabelled = torch.randn(7, 6), torch.randn(4, 6)
    emb, z = _WithExpander(encoder, expander)(labelled, unlabelled)
    torch.testing.assert_close(emb, encoder(labelled))
    torch.testing.assert_close(z, expander(encoder.backbone(unlabelled)))


def test_unlabelled_loss_needs_a_pretrained_expander():
    with pytest.raises(ValueError, match="init_from"):
        MetricTrain(unlabelled_loss="vicreg")
    with pytest.raises(ValueError, match="unlabelled_batch_size"):
        MetricTrain(unlabelled_loss="vicreg", init_from="pretrain", unlabelled_batch_size=1)


TRANSPLANT = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [16, 16]}
    batch_size: 16
    train: {epochs: 1, max_steps: 1}
  unpooled:
    stage: metric_train
    init_from: pretrain
    backbone: {name: resnet18, max_pool: false}
    label_fraction: 1.0
    batch_size: 16
    train: {epochs: 1, max_steps: 1, optimizer: {name: AdamW, lr: 0.0}}
""", name="transplant", seed=1, backbone="resnet18", writers=16, image_size=None)


def test_backbone_variant_starts_from_the_pretrained_weights(tmp_path: Path):
    run_dir = _run(tmp_path, TRANSPLANT)
    cpu = torch.device("cpu")
    pretrained, _ = load_encoder(run_dir / "stages" / "pretrain" / "encoder.pt", get_registry(), cpu)
    tuned, state = load_encoder(run_dir / "stages" / "unpooled" / "encoder.pt", get_registry(), cpu)
    assert state["backbone_spec"]["max_pool"] is False
    assert isinstance(tuned.backbone.net.maxpool, nn.Identity)
    assert not isinstance(pretrained.backbone.net.maxpool, nn.Identity)
    ours, theirs = tuned.backbone.state_dict(), pretrained.backbone.state_dict()
    weights = [k for k in theirs if k.endswith("weight")]
    assert len(weights) > 20
    for key in weights:
        torch.testing.assert_close(ours[key], theirs[key], rtol=0, atol=0)


def test_backbone_variant_must_fit_the_pretrained_weights(tmp_path: Path):
    with pytest.raises(HvkitError, match="weights of stage 'pretrain' do not fit"):
        _run(tmp_path, TRANSPLANT.replace("model: {backbone: resnet18}", "model: {backbone: small_cnn}"))
