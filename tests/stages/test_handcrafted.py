"""Hand-crafted features: HOG against scikit-image and a hand-computed case, and all of them in the evaluate stage."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.feature import hog as skimage_hog

from click.testing import CliRunner

from hvkit.cli import main
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.stages.evaluate import load_pair_scores
from hvkit_plugins.stages.handcrafted import HANDCRAFTED, chunks, gsc, hinge, hog, pixels


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


def test_the_evaluate_stage_scores_handcrafted_features_without_a_model(tmp_path: Path):
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
      lbp:
        stage: evaluate
        features: lbp
        label_fraction: 0.5
        verifiers: [cosine_pair]
        evaluators: [verification]
        plots: false
      hinge:
        stage: evaluate
        features: hinge
        feature_options: {leg: 4}
        label_fraction: 0.5
        verifiers: [cosine_pair]
        evaluators: [verification]
        plots: false
      gsc:
        stage: evaluate
        features: gsc
        feature_options: {grid: 2}
        label_fraction: 0.5
        verifiers: [cosine_pair]
        evaluators: [verification]
        plots: false
      gsc_bits:
        stage: evaluate
        features: gsc
        feature_options: {grid: 2, binary: 0.0}
        label_fraction: 0.5
        verifiers: [correlation_pair]
        evaluators: [verification]
        plots: false
    """, name="handcrafted", writers=24, samples_per_writer=6)
    run_dir = run_recipe_text(text, tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    found = metrics["hog"]["verification"]
    assert set(found) >= {"cosine_pair", "wccn_pair"}
    assert found["cosine_pair"]["roc_auc"] > 0.6  # synthetic writers differ in slant and stroke: HOG sees it
    assert found["cosine_pair"]["roc_auc"] != metrics["pixels"]["verification"]["cosine_pair"]["roc_auc"]
    for stage in ("lbp", "hinge", "gsc"):  # stroke texture, curvature and shape: they see the writers too
        assert metrics[stage]["verification"]["cosine_pair"]["roc_auc"] > 0.6
    test = cedar_and(synthetic_writers=24, synthetic_samples_per_writer=6, image_size=32, seed=0).splits["test"]
    first, second, same = sslhv_pairs(np.asarray(test.labels), seed=0)
    embedded = np.load(run_dir / "stages" / "hinge" / "test_embeddings.npy")
    np.testing.assert_array_equal(embedded, hinge(test.images, leg=4).numpy())  # the stage's feature_options
    assert np.abs(embedded - hinge(test.images).numpy()).max() > 0.1
    np.testing.assert_array_equal(np.load(run_dir / "stages" / "gsc" / "test_embeddings.npy"),
                                  gsc(test.images, grid=2).numpy())
    bits = gsc(test.images, grid=2, binary=0.0).numpy().astype(np.float64)  # CEDAR-FOX's form: φ of the bits
    np.testing.assert_array_equal(np.load(run_dir / "stages" / "gsc_bits" / "test_embeddings.npy"), bits)
    saved = {stage: load_pair_scores(run_dir / "stages" / stage / "test_pair_scores.npz")
             for stage in ("hog", "pixels", "lbp", "hinge", "gsc", "gsc_bits")}
    centred = bits - bits.mean(1, keepdims=True)
    unit = centred / np.linalg.norm(centred, axis=1, keepdims=True)
    np.testing.assert_allclose(saved["gsc_bits"]["correlation_pair"][0].scores,
                               (unit[first] * unit[second]).sum(1), atol=1e-5)
    assert metrics["gsc_bits"]["verification"]["correlation_pair"]["roc_auc"] > 0.6
    for k in (int(np.argmax(same)), int(np.argmin(same))):  # a same-writer pair, then a different-writer one
        images = []
        for index in (first[k], second[k]):
            images.append(str(tmp_path / f"word{index}.png"))
            Image.fromarray(255 - test.images[index, 0].numpy()).save(images[-1])  # dark ink on white, as scanned
        for stage, verifier in (("hog", "wccn_pair"), ("hog", "cosine_pair"), ("pixels", "cosine_pair"),
                                ("lbp", "cosine_pair"), ("hinge", "cosine_pair"), ("gsc", "cosine_pair"),
                                ("gsc_bits", "correlation_pair")):
            result = CliRunner().invoke(main, ["verify", str(run_dir), *images, "--stage", stage,
                                               "--verifier", verifier])
            assert result.exit_code == 0, result.output
            score = float(re.match(r"score (\S+)", result.output).group(1))
            assert score == pytest.approx(saved[stage][verifier][0].scores[k], abs=5e-5)  # printed to 4 places
        default = CliRunner().invoke(main, ["verify", str(run_dir), *images])  # no encoder anywhere: the last stage
        assert default.output == result.output
        out = tmp_path / f"hinge{k}.npy"  # hvkit embed computes a stage's features, with its options
        result = CliRunner().invoke(main, ["embed", str(run_dir), *images, "--stage", "hinge", "--out", str(out)])
        assert result.exit_code == 0, result.output
        np.testing.assert_allclose(np.load(out), embedded[[first[k], second[k]]], atol=1e-6)
    refused = CliRunner().invoke(main, ["embed", str(run_dir), *images, "--stage", "hog", "--out", str(out),
                                        "--tta-shifts", "2"])
    assert refused.exit_code == 2 and refused.stderr == ("error: stage 'hog' computes hog features: --features and "
                                                         "--tta-shifts/--tta-zoom are for a network's embeddings\n")
    outputs = run_dir / "stages" / "hog" / "outputs.json"
    recorded = json.loads(outputs.read_text())
    assert recorded["input"] == {"in_channels": 1, "image_size": 32, "keep_aspect": False}
    del recorded["input"]  # a run from before the input format was recorded
    outputs.write_text(json.dumps(recorded))
    old = CliRunner().invoke(main, ["verify", str(run_dir), *images, "--stage", "hog"])
    assert old.exit_code == 2 and old.stderr == (
        f"error: {run_dir}: stage 'hog' scored hog features before runs recorded how their images were read; "
        f"run it again: hvkit eval {run_dir} --stage hog\n")
    with pytest.raises(Exception, match="model_from must name an earlier stage unless features is one of"):
        run_recipe_text(text.replace("features: hog", "features: backbone"), tmp_path, "no_model")



@pytest.mark.parametrize("features, options, message", [
    ("hinge", "{legs: 4}", "features: hinge takes leg, bins, ordered, not legs"),
    ("lbp", "{grid: 2, leg: 4}", "features: lbp takes grid, not leg"),
    ("hog", "{grid: 2}", "features: hog takes no options, not grid"),
    ("gsc", "{leg: 4}", "features: gsc takes grid, equal_mass, stroke, binary, not leg"),
    ("backbone", "{leg: 4}", "features: backbone takes no options, not leg"),
    ("gsc", "{binary: 1.5}", "features: gsc: gsc's binary is a threshold on a cell's fraction of pixels in [0, 1), "
                             "got 1.5"),
    ("hinge", "{leg: 0}", "features: hinge: hinge needs leg >= 1 and bins >= 2, got leg 0 and bins 24"),
])
def test_feature_options_are_checked_before_anything_runs(tmp_path: Path, features, options, message):
    model = "model_from: pretrain" if features == "backbone" else ""
    text = tiny_recipe(f"""
      pretrain:
        stage: metric_train
        loss: triplet
        train: {{epochs: 1}}
      words:
        stage: evaluate
        {model}
        features: {features}
        feature_options: {options}
    """, name="options")
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2 and result.stderr == f"error: {path}:stages.words.feature_options: {message}\n"


def test_features_are_computed_a_bounded_chunk_at_a_time(monkeypatch):
    images = torch.from_numpy(np.random.default_rng(2).integers(0, 256, size=(7, 1, 32, 32)).astype(np.uint8))
    sizes = []

    def extract(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        assert x.dtype == np.float64
        return x.reshape(len(x), -1)[:, :3]

    monkeypatch.setattr(chunks, "CHUNK_PIXELS", 3 * 32 * 32 + 5)  # three images a chunk by default
    found = chunks.in_chunks(images, extract, None)
    assert sizes == [3, 3, 1] and found.dtype == torch.float32
    torch.testing.assert_close(found, images.reshape(7, -1)[:, :3].float())
    assert chunks.in_chunks(images, extract, 5).shape == (7, 3) and sizes[3:] == [5, 2]
    monkeypatch.setattr(chunks, "CHUNK_PIXELS", 10)  # an image larger than the budget still goes, alone
    chunks.in_chunks(images[:2], extract, None)
    assert sizes[5:] == [1, 1]
    for name in ("hog", "lbp", "hinge", "gsc"):  # the same features whatever the chunks
        torch.testing.assert_close(HANDCRAFTED[name](images), HANDCRAFTED[name](images, chunk=2))
