"""A stage's own ``data``: training on one collection and evaluating on another, in one recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from hvkit.errors import HvkitError, RecipeError
from hvkit.pipeline import run
from hvkit.recipe import load_recipe, validate
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.stages.evaluate import load_pairs_digest, pairs_digest

OTHER = "{name: cedar_and, synthetic_writers: 20, synthetic_samples_per_writer: 5, image_size: 32, seed: 5}"
STAGES = """
  train:
    stage: metric_train
    label_fraction: 1.0
    loss: contrastive
    batch_size: 16
    train: {max_steps: 4}
  home:
    stage: evaluate
    model_from: train
    label_fraction: 0.5
    verifiers: [cosine_pair]
    evaluators: [verification]
    plots: false
  away:
    stage: evaluate
    data: OTHER
    model_from: train
    label_fraction: 0.5
    verifiers: [cosine_pair]
    evaluators: [verification]
    plots: false
"""


def test_an_evaluation_stage_scores_another_collection(tmp_path: Path):
    run_dir = run_recipe_text(tiny_recipe(STAGES.replace("OTHER", OTHER), name="cross", writers=24), tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    home = cedar_and(synthetic_writers=24, synthetic_samples_per_writer=4, image_size=32, seed=0)
    other = cedar_and(synthetic_writers=20, synthetic_samples_per_writer=5, image_size=32, seed=5)
    assert metrics["data"]["generator"]["num_writers"] == 24  # the recipe's data, as before
    assert "data" not in metrics["home"]
    assert metrics["away"]["data"]["generator"] == other.info["generator"] and metrics["away"]["data"]["synthetic"]
    for stage, data, seed in (("home", home, 0), ("away", other, 5)):  # the stage's data.seed draws its pairs
        test = data.splits["test"]
        first, second, same = sslhv_pairs(np.asarray(test.labels), seed=seed)
        saved = run_dir / "stages" / stage / "test_pair_scores.npz"
        assert load_pairs_digest(saved) == pairs_digest(test, first, second)  # these images, these pairs
        assert metrics[stage]["pairs"]["test"] == len(first)
    report = (run_dir / "report.md").read_text()
    assert report.startswith("# cross\n\n**Synthetic data: not results on real handwriting.**")
    assert "## away\n\nData: cedar_and (synthetic).\n\n" in report and "## home\n\nData:" not in report
    outputs = json.loads((run_dir / "stages" / "away" / "outputs.json").read_text())
    assert outputs["input"] == {"in_channels": 1, "image_size": 32, "keep_aspect": False}
    assert outputs["data"] == metrics["away"]["data"]  # kept with the outputs: a resumed run reads it from there
    run(None, resume=run_dir, console=lambda _: None)
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert (run_dir / "report.md").read_text() == report


@pytest.mark.parametrize("data,where,match", [
    ("{name: cedar_and, synthetic_writerz: 20}", "stages.away.data.synthetic_writerz", "unknown parameter"),
    ("{name: cedar_andd}", "stages.away.data.name", "cedar_and"),
    ("{name: cedar_and, image_size: big}", "stages.away.data.image_size", "big"),
])
def test_a_bad_stage_data_is_named_when_validated(tmp_path: Path, data, where, match):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe(STAGES.replace("OTHER", data), writers=24), encoding="utf-8")
    with pytest.raises(RecipeError, match=match) as info:
        validate(load_recipe(path), get_registry(), str(path))
    assert info.value.path == where


def test_an_encoder_refuses_data_of_other_channels(tmp_path: Path):
    text = tiny_recipe(STAGES.replace("OTHER", "{name: cedar_and, synthetic_writers: 20, channels: 3}"), writers=24)
    with pytest.raises(HvkitError, match=r"^stage 'away': the encoder of stage 'train' reads 1-channel images, but "
                                         r"this stage's data \(cedar_and\) has 3; give the data channels: 1$"):
        run_recipe_text(text, tmp_path)
