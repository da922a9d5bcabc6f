"""ssl_pretrain with a loss that takes feature maps (VICRegL): maps, cell positions, multi-crop, refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from hvkit.engine.trainer import read_log
from hvkit.errors import HvkitError
from hvkit.testing import run_recipe_text, tiny_recipe
from hvkit_plugins.losses.vicregl import VICRegLLoss
from hvkit_plugins.stages.ssl_pretrain import cell_positions
from hvkit_plugins.transforms import HandwritingViews
from hvkit_plugins.transforms.batched import resample

RECIPE = tiny_recipe("""
  pretrain:
    stage: ssl_pretrain
    loss: {name: vicregl, num_matches: 6, local_dims: [16, 8]}
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    train: {epochs: 1, max_steps: 3, log_every: 1}
""", name="vicregl")


def test_cell_positions_of_the_identity_are_the_cell_centres() -> None:
    positions = cell_positions(torch.eye(3).expand(2, 3, 3), 2, 4)
    expected = torch.tensor([[[-0.75, -0.5], [-0.25, -0.5], [0.25, -0.5], [0.75, -0.5]],
                             [[-0.75, 0.5], [-0.25, 0.5], [0.25, 0.5], [0.75, 0.5]]])
    assert positions.shape == (2, 2, 4, 2)
    torch.testing.assert_close(positions, expected.expand(2, 2, 4, 2))


def test_cell_positions_of_a_crop_by_hand() -> None:
    """The top-right quarter (x in [0, 1], y in [-1, 0]) resized to the full view: a 2 x 2 map's cells.

    At 64 px the crop is pixels x 32-63, y 0-31; the map's first cell covers x 32-47, y 0-15,
    centred at pixel (40, 8): normalised (2 * 40 / 64 - 1, 2 * 8 / 64 - 1) = (0.25, -0.75).
    """
    theta = torch.tensor([[[0.5, 0.0, 0.5], [0.0, 0.5, -0.5], [0.0, 0.0, 1.0]]])
    expected = torch.tensor([[[[0.25, -0.75], [0.75, -0.75]], [[0.25, -0.25], [0.75, -0.25]]]])
    torch.testing.assert_close(cell_positions(theta, 2, 2), expected)


def test_at_full_resolution_the_positions_are_where_each_view_pixel_was_sampled() -> None:
    x = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    _, theta = HandwritingViews().with_geometry(x, torch.Generator().manual_seed(1))
    sampled = F.grid_sample(x, cell_positions(theta, 16, 16), mode="bilinear", padding_mode="zeros",
                            align_corners=False)
    torch.testing.assert_close(sampled, resample(x, theta))


def _spy(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    forward = VICRegLLoss.forward

    def spy(self, z_a, z_b, *local, maps=None, positions=None):
        calls.append({"loss": self, "z": tuple(z_a.shape), "maps": [tuple(m.shape) for m in maps],
                      "positions": None if positions is None else [p.clone() for p in positions],
                      "projector": self.projector[0].weight.detach().clone(), "local": len(local)})
        return forward(self, z_a, z_b, *local, maps=maps, positions=positions)

    monkeypatch.setattr(VICRegLLoss, "forward", spy)
    return calls


def test_the_stage_gives_the_maps_and_positions_and_trains_the_local_projector(tmp_path: Path, monkeypatch) -> None:
    calls = _spy(monkeypatch)
    run_dir = run_recipe_text(RECIPE, tmp_path)
    assert len(calls) == 3
    for call in calls:
        assert call["z"] == (8, 16) and call["maps"] == [(8, 256, 4, 4)] * 2  # small_cnn at 32 px: 4 x 4 cells
        p_a, p_b = call["positions"]
        assert p_a.shape == p_b.shape == (8, 4, 4, 2) and not torch.equal(p_a, p_b)
        assert p_a.abs().max() < 1.5  # mild crops and affines: near the image
    assert calls[0]["loss"].map_channels == 256
    assert not torch.equal(calls[0]["projector"], calls[-1]["projector"])  # the loss's projector is optimised
    assert all(row["loss"] > 0 for row in read_log(run_dir / "stages" / "pretrain" / "log.jsonl"))


def test_a_transform_without_geometry_gives_no_positions(tmp_path: Path, monkeypatch) -> None:
    calls = _spy(monkeypatch)
    text = RECIPE.replace("num_matches: 6,", "matching: feature,").replace(
        "batch_size: 8", "batch_size: 8\n    transform: gaussian_noise")
    run_recipe_text(text, tmp_path)
    assert [c["positions"] for c in calls] == [None] * 3
    with pytest.raises(HvkitError, match="vicregl: matching='both' needs each map cell's position"):
        run_recipe_text(RECIPE.replace("batch_size: 8", "batch_size: 8\n    transform: gaussian_noise"),
                        tmp_path, "both")


@pytest.mark.parametrize("edit, message", [
    (("model: {backbone: small_cnn}", "model: {backbone: {name: vit, image_size: 32, patch_size: 8, hidden_dim: 16, "
      "layers: 1, heads: 2}}"), "loss vicregl takes feature maps but backbone vit has none"),
    (("batch_size: 8", "batch_size: 8\n    teacher_momentum: 0.9"), "without a teacher; remove teacher_momentum"),
])
def test_what_the_stage_cannot_give_is_refused_before_training(tmp_path: Path, edit: tuple[str, str],
                                                               message: str) -> None:
    with pytest.raises(HvkitError, match=message):
        run_recipe_text(RECIPE.replace(*edit), tmp_path)
    assert not (tmp_path / "recipe" / "stages" / "pretrain" / "last.pt").exists()


def test_too_many_matches_for_the_map_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(HvkitError, match=r"num_matches=20 .* exceeds the 16 cells of a 4x4 feature map"):
        run_recipe_text(RECIPE.replace("num_matches: 6", "num_matches: 20"), tmp_path)


MULTI_CROP = RECIPE.replace("num_matches: 6,", "num_matches: 6, local_matches: 3,").replace(
    "batch_size: 8", "batch_size: 8\n    local_views: 2\n    local_size: 16")


def test_with_local_views_every_view_reaches_the_loss_in_one_call_and_the_encoder_is_saved(
        tmp_path: Path, monkeypatch) -> None:
    """2 global views of 32 px (4 x 4 maps) and 2 local crops at 16 px (2 x 2 maps), with their own positions."""
    seen: list[dict] = []
    forward = VICRegLLoss.forward

    def spy(self, *views, maps=None, positions=None):
        value = forward(self, *views, maps=maps, positions=positions)
        seen.append({"loss": copy.deepcopy(self), "views": [z.detach().clone() for z in views], "value": value.item(),
                     "maps": [m.detach().clone() for m in maps], "positions": [p.clone() for p in positions]})
        return value

    monkeypatch.setattr(VICRegLLoss, "forward", spy)
    run_dir = run_recipe_text(MULTI_CROP, tmp_path)
    assert len(seen) == 3  # one call a step, every view in it
    for call in seen:
        assert [tuple(z.shape) for z in call["views"]] == [(8, 16)] * 4
        assert [tuple(m.shape) for m in call["maps"]] == [(8, 256, 4, 4)] * 2 + [(8, 256, 2, 2)] * 2
        assert [tuple(p.shape) for p in call["positions"]] == [(8, 4, 4, 2)] * 2 + [(8, 2, 2, 2)] * 2
        spans = [(p.flatten(1, 2).amax(1) - p.flatten(1, 2).amin(1)).mean() for p in call["positions"]]
        assert max(spans[2:]) < min(spans[:2])  # the local crops cover a smaller part of the image
        assert all(not torch.equal(a, b) for a, b in zip(call["positions"][1:], call["positions"][2:]))
    # the local views change the loss: the same step's value without them is another one
    last = seen[-1]
    loss = last["loss"]
    with torch.no_grad():
        two_view = forward(loss, *last["views"][:2], maps=tuple(last["maps"][:2]),
                           positions=tuple(last["positions"][:2]))
    assert abs(two_view.item() - last["value"]) > 1e-3
    stage = run_dir / "stages" / "pretrain"
    assert all(row["loss"] > 0 for row in read_log(stage / "log.jsonl"))
    saved = torch.load(run_dir / json.loads((stage / "outputs.json").read_text())["encoder"], weights_only=True)
    assert saved["backbone"] and saved["head"]


def test_multi_crop_needs_local_views_big_enough_for_local_matches(tmp_path: Path) -> None:
    with pytest.raises(HvkitError, match=r"local_matches=3 exceeds the 1 cells of a local view's 1x1 feature map"):
        run_recipe_text(MULTI_CROP.replace("local_size: 16", "local_size: 8"), tmp_path)


def test_a_local_transform_without_geometry_gives_no_positions(tmp_path: Path) -> None:
    text = MULTI_CROP.replace("local_size: 16", "local_size: 16\n    local_transform: gaussian_noise")
    with pytest.raises(HvkitError, match=r"matching='both' needs each map cell's position .* local_transform"):
        run_recipe_text(text, tmp_path)
    run_recipe_text(text.replace("num_matches: 6, local_matches: 3,", "matching: feature,"), tmp_path, "feature")


def test_a_feature_map_loss_without_takes_local_views_is_refused_local_views(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(VICRegLLoss, "takes_local_views", False)
    with pytest.raises(HvkitError, match="loss vicregl takes feature maps but not local views"):
        run_recipe_text(MULTI_CROP, tmp_path)
    assert not (tmp_path / "recipe" / "stages" / "pretrain" / "last.pt").exists()
