"""Test-time views: exact shifts and zooms, their mean embedding in the evaluate stage and in ``hvkit verify``."""

from __future__ import annotations

import copy
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner
from PIL import Image

from hvkit.cli import main
from hvkit.engine import load_checkpoint
from hvkit.engine.context import build
from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit.testing import run_recipe_text
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.stages.encoder import embed, load_encoder, to_float
from hvkit_plugins.stages.test_views import TestViews

from .test_evaluate import RECIPE


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """Content moved dx pixels right and dy down, the border repeated into the gap (float64 reference)."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="edge")
    h, w = images.shape[-2:]
    return padded[..., pad - dy:pad - dy + h, pad - dx:pad - dx + w]


def test_shifted_views_move_the_image_by_whole_pixels_and_repeat_the_border() -> None:
    images = torch.rand(3, 2, 9, 11, generator=torch.Generator().manual_seed(0))
    views = TestViews(shifts=2).apply(images).reshape(5, 3, 2, 9, 11).double().numpy()
    reference = images.double().numpy()
    np.testing.assert_array_equal(views[0], reference)
    for view, (dx, dy) in zip(views[1:], [(2, 0), (-2, 0), (0, 2), (0, -2)]):
        np.testing.assert_allclose(view, shifted(reference, dx, dy), atol=1e-6)


def test_a_zoom_magnifies_about_the_centre() -> None:
    """On a ramp I(y, x) = x + 10 y bilinear sampling is exact: output pixel j reads input ((2j + 1 - W) / z + W - 1) / 2."""
    h, w, z = 8, 10, 2.0
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    ramp = torch.tensor(xs + 10 * ys, dtype=torch.float32)[None, None]
    view = TestViews(zooms=[z]).apply(ramp)[1, 0].double().numpy()
    source_x = ((2 * xs + 1 - w) / z + w - 1) / 2
    source_y = ((2 * ys + 1 - h) / z + h - 1) / 2
    np.testing.assert_allclose(view, source_x + 10 * source_y, atol=1e-4)
    np.testing.assert_allclose(TestViews(zooms=[1.0]).apply(ramp)[1], ramp[0], atol=1e-5)


def test_average_is_the_mean_over_each_images_views() -> None:
    views = TestViews(shifts=1, zooms=[0.9, 1.1])
    assert views.count == 7 and TestViews().count == 1
    embeddings = torch.randn(7 * 4, 5, dtype=torch.float64)
    expected = torch.stack([embeddings[i::4].mean(0) for i in range(4)])
    torch.testing.assert_close(views.average(embeddings), expected)


@pytest.mark.parametrize("options, message", [
    ({"shifts": -1}, r"tta.shifts=-1 must be >= 0 pixels"),
    ({"zooms": [1.1, 0.0]}, r"tta.zooms=\[1.1, 0.0\] must all be > 0"),
])
def test_bad_views_are_one_line_errors(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TestViews(**options)


def tta_recipe(**tta: object) -> dict:
    recipe = copy.deepcopy(RECIPE)
    recipe["stages"]["evaluate"]["tta"] = tta
    recipe["stages"]["evaluate"]["verifiers"] = ["cosine_pair"]
    return recipe


def test_evaluate_embeds_every_split_as_the_mean_over_its_views(tmp_path: Path) -> None:
    run_dir = run_recipe_text(yaml.safe_dump(tta_recipe(shifts=2), sort_keys=False), tmp_path)
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    data = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits
    encoder.eval()

    def reference(images: torch.Tensor) -> torch.Tensor:
        pixels = to_float(images, torch.device("cpu")).double().numpy()
        moved = [pixels] + [shifted(pixels, dx, dy) for dx, dy in [(2, 0), (-2, 0), (0, 2), (0, -2)]]
        with torch.no_grad():
            return torch.stack([encoder(torch.from_numpy(m).float(), "backbone") for m in moved]).mean(0)

    saved = np.load(run_dir / "stages" / "evaluate" / "test_embeddings.npy")
    expected = reference(data["test"].images).numpy()
    np.testing.assert_allclose(saved, expected, rtol=1e-4, atol=1e-5)
    plain = embed(encoder, data["test"].images, torch.device("cpu")).numpy()
    assert np.abs(plain - expected).max() > 10 * np.abs(saved - expected).max()
    fitted = load_checkpoint(run_dir / "stages" / "evaluate" / "verifiers.pt")["cosine_pair"]["state"]
    torch.testing.assert_close(fitted["mean"], reference(data["train"].images).mean(0), rtol=1e-4, atol=1e-5)
    metrics = yaml.safe_load((run_dir / "metrics.json").read_text())["evaluate"]
    assert metrics["tta"] == {"shifts": 2, "zooms": []}
    assert "mean over 5 views of its image (test-time augmentation: shifts of 2 px, zooms [])" in (
        run_dir / "report.md").read_text()


def test_verify_embeds_its_two_images_as_the_stage_did(tmp_path: Path) -> None:
    run_dir = run_recipe_text(yaml.safe_dump(tta_recipe(shifts=2, zooms=[1.2]), sort_keys=False), tmp_path)
    test = cedar_and(synthetic_writers=40, synthetic_samples_per_writer=6, seed=RECIPE["seed"]).splits["test"]
    files = []
    for k in (0, 7):
        files.append(tmp_path / f"word{k}.png")
        Image.fromarray(255 - test.images[k, 0].numpy()).save(files[-1])  # dark ink on white, as scanned
    result = CliRunner().invoke(main, ["verify", str(run_dir), *map(str, files)])
    assert result.exit_code == 0, result.output
    score = float(re.match(r"score (\S+)", result.output).group(1))
    encoder, _ = load_encoder(run_dir / "stages" / "train" / "encoder.pt", get_registry(), torch.device("cpu"))
    entry = load_checkpoint(run_dir / "stages" / "evaluate" / "verifiers.pt")["cosine_pair"]
    head = build(get_registry(), "head", entry["spec"], in_dim=16)
    head.load_state_dict(entry["state"])
    scores = {}
    for name, views in {"tta": TestViews(shifts=2, zooms=[1.2]), "plain": None}.items():
        emb = embed(encoder, test.images[[0, 7]], torch.device("cpu"), views=views)
        scores[name] = float(head(emb[:1], emb[1:]).reshape(-1)[0])
    assert score == pytest.approx(scores["tta"], abs=1e-4)
    assert abs(score - scores["plain"]) > 1e-3


def test_tta_on_raw_pixels_is_a_one_line_error(tmp_path: Path) -> None:
    recipe = tta_recipe(shifts=1)
    recipe["stages"]["evaluate"] |= {"features": "pixels", "model_from": None}
    with pytest.raises(HvkitError) as caught:  # caught by validation, before any work starts
        run_recipe_text(yaml.safe_dump(recipe, sort_keys=False), tmp_path)
    assert str(caught.value) == (f"{tmp_path / 'recipe.yaml'}:stages.evaluate.tta: tta averages a network's "
                                 "embeddings; hand-crafted features (features: pixels) take none")
