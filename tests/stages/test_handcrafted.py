"""Hand-crafted baseline features: HOG against scikit-image and a hand-computed case, and in the evaluate stage."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.feature import hog as skimage_hog

from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.stages.handcrafted import hog, pixels


def reference(images: np.ndarray) -> np.ndarray:
    """scikit-image's HOG of each (C, H, W) uint8 image scaled to [0, 1], with the study's settings."""
    return np.stack([skimage_hog(image.transpose(1, 2, 0) / 255.0, orientations=9, pixels_per_cell=(8, 8),
                                 cells_per_block=(2, 2), block_norm="L2-Hys", channel_axis=-1)
                     for image in images])


@pytest.mark.parametrize("shape", [(6, 1, 64, 64), (3, 1, 50, 70), (3, 3, 40, 33)])
def test_hog_equals_scikit_images(shape):
    rng = np.random.default_rng(sum(shape))
    images = rng.integers(0, 256, size=shape).astype(np.uint8)
    images[0] = np.clip(np.add.outer(np.arange(shape[2]) * 7, np.arange(shape[3]) * 3), 0, 255)  # straight edges
    if shape[1] == 1:
        images[1] = 0  # no gradient at all: every block is 0
    found = hog(torch.from_numpy(images), chunk=2)
    assert found.dtype == torch.float32
    assert found.shape == (shape[0], 9 * 4 * (shape[2] // 8 - 1) * (shape[3] // 8 - 1))
    np.testing.assert_allclose(found.numpy(), reference(images), rtol=0, atol=1e-6)
    if shape[1] == 1:
        assert not found[1].any()


def test_hog_of_a_horizontal_ramp_by_hand():
    # value 3x: g_col = 6/255 inside, 0 on the border columns; g_row = 0 → orientation 0°, bin 0. Away from
    # the border each cell's bin 0 is 6/255 and the others 0; a block of four equal cells is (¼)^½ = 0.5 each,
    # clipped to 0.2 and normalised again: 0.5 each (ε = 1e-5 moves it by < 1e-6).
    image = np.tile(np.arange(64) * 3, (64, 1)).astype(np.uint8)[None, None]
    # The border cells hold 7/8 of that (one of their 8 columns has no gradient): a border block normalises to
    # 0.466 and 0.532, both clipped to 0.2, so it too ends at 0.5 everywhere.
    blocks = hog(torch.from_numpy(image)).numpy().reshape(7, 7, 2, 2, 9)
    np.testing.assert_allclose(blocks[..., 0], 0.5, rtol=0, atol=1e-6)
    assert not blocks[..., 1:].any()


def test_bad_images_are_one_line_errors():
    with pytest.raises(ValueError, match=r"hog takes \(N, C, H, W\) images, got shape \(64, 64\)"):
        hog(torch.zeros(64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="hog needs images of at least 16 x 16 pixels, got 15 x 64"):
        hog(torch.zeros(1, 1, 15, 64, dtype=torch.uint8))


def test_pixels_are_the_flattened_images_in_unit_range():
    images = torch.arange(2 * 1 * 3 * 4, dtype=torch.uint8).reshape(2, 1, 3, 4) * 10
    torch.testing.assert_close(pixels(images), images.reshape(2, -1).double().div(255).float())


def test_the_evaluate_stage_scores_hog_without_a_model(tmp_path: Path):
    text = tiny_recipe("""
      hog:
        stage: evaluate
        features: hog
        label_fraction: 0.5
        verifiers: [cosine_pair, wccn_pair]
        evaluators: [verification]
        plots: false
      pixels:
        stage: evaluate
        features: pixels
        label_fraction: 0.5
        verifiers: [cosine_pair]
        evaluators: [verification]
        plots: false
    """, name="handcrafted", writers=24, samples_per_writer=6)
    run_dir = run_recipe_text(text, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = metrics["hog"]["verification"]
    assert set(found) >= {"cosine_pair", "wccn_pair"}
    assert found["cosine_pair"]["roc_auc"] > 0.6  # synthetic writers differ in slant and stroke: HOG sees it
    assert found["cosine_pair"]["roc_auc"] != metrics["pixels"]["verification"]["cosine_pair"]["roc_auc"]
    images = [str(tmp_path / "a.png"), str(tmp_path / "b.png")]
    for path in images:
        Image.fromarray(np.full((64, 64), 255, np.uint8)).save(path)
    result = CliRunner().invoke(main, ["verify", str(run_dir), *images])
    assert result.exit_code == 2 and "every evaluation stage scored hand-crafted features" in result.stderr
    with pytest.raises(Exception, match="model_from must name an earlier stage unless features is one of"):
        run_recipe_text(text.replace("features: hog", "features: backbone"), tmp_path, "no_model")
