"""First-party components whose factories refuse a value: ``hvkit validate`` reports it before any stage runs.

The good recipes hold values that only the run-time context bounds (a ``w_size`` above the smaller
stand-in ``embedding_dim`` only, ``num_proxies`` above the smaller stand-in ``num_classes``): validation lets them pass."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import tiny_recipe


@pytest.mark.parametrize("good, bad, message", [
    ("{stage: metric_train, loss: triplet}", "{stage: metric_train, loss: {name: triplet, margin: -1}}",
     "stages.train.loss: margin must be non-negative (default 0.2), got -1"),
    ("{stage: metric_train, transform: {name: handwriting_views, crop_scale: [0.5, 0.9]}}",
     "{stage: metric_train, transform: {name: handwriting_views, crop_scale: [0.9, 0.5]}}",
     "stages.train.transform: random_resized_crop: scale=[0.9, 0.5] must be [min, max] with 0.001 <= min <= max "
     "<= 1.0"),
    ("{stage: evaluate, features: hog, evaluators: [verification, {name: retrieval, recall_at: [1]}]}",
     "{stage: evaluate, features: hog, evaluators: [verification, {name: retrieval, recall_at: [0]}]}",
     "stages.train.evaluators.1: recall_at=[0] must be a non-empty list of positive ranks"),
    ("{stage: metric_train, loss: {name: arcface, margin: 0.5}}",
     "{stage: metric_train, loss: {name: arcface, margin: 28.6}}",
     "stages.train.loss: margin is an angle in radians in [0, pi/2), got 28.6: ArcFace uses 0.5 rad (28.65 degrees); "
     "give radians, not degrees"),
    ("{stage: metric_train, loss: {name: manifold, num_proxies: 5000}}",
     "{stage: metric_train, loss: {name: manifold, num_proxies: 1}}",
     "stages.train.loss: manifold: num_proxies must be at least 2 (each proxy a group of classes; default one per "
     "class), got 1"),
    ("{stage: ssl_pretrain, loss: {name: w_mse, w_size: 100}}",
     "{stage: ssl_pretrain, loss: {name: w_mse, w_size: 1}}",
     "stages.train.loss: w_mse: w_size must be at least 2, got 1; the paper uses 128"),
    ("{stage: ssl_pretrain, head: {name: mlp, dims: [64, 32]}}",
     "{stage: ssl_pretrain, head: {name: mlp, dims: [64, 0]}}",
     "stages.train.head: mlp: dims=[64, 0] must be a non-empty list of sizes >= 1"),
    ("{stage: evaluate, features: hog, verifiers: [{name: sslhv_pair, hidden: [8]}]}",
     "{stage: evaluate, features: hog, verifiers: [{name: sslhv_pair, hidden: []}]}",
     "stages.train.verifiers.0: sslhv_pair: hidden=[] must be a non-empty list of sizes >= 1"),
    ("{stage: metric_train, backbone: {name: vit, image_size: 32, hidden_dim: 96, heads: 4}}",
     "{stage: metric_train, backbone: {name: vit, image_size: 32, hidden_dim: 96, heads: 5}}",
     "stages.train.backbone: vit: hidden_dim=96 must be divisible by heads=5"),
])
def test_a_refused_value_is_a_one_line_error_at_validation(tmp_path: Path, good: str, bad: str, message: str) -> None:
    for name, stage in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.yaml").write_text(tiny_recipe(f"  train: {stage}\n", name=name))
    assert CliRunner().invoke(main, ["validate", str(tmp_path / "good.yaml")]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'bad.yaml'}:{message}\n"
