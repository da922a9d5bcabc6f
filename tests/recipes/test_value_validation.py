"""First-party components whose factories refuse a value: ``hvkit validate`` reports it before any stage runs."""

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
])
def test_a_refused_value_is_a_one_line_error_at_validation(tmp_path: Path, good: str, bad: str, message: str) -> None:
    for name, stage in (("good", good), ("bad", bad)):
        (tmp_path / f"{name}.yaml").write_text(tiny_recipe(f"  train: {stage}\n", name=name))
    assert CliRunner().invoke(main, ["validate", str(tmp_path / "good.yaml")]).exit_code == 0
    result = CliRunner().invoke(main, ["validate", str(tmp_path / "bad.yaml")])
    assert result.exit_code == 2 and result.stderr == f"error: {tmp_path / 'bad.yaml'}:{message}\n"
