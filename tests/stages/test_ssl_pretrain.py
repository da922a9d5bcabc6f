"""Views through the encoder (one pass with shared BatchNorm statistics, or one per view) and multi-crop."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hvkit.pipeline import run
from hvkit_plugins.backbones.small_cnn import SmallCNN
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.stages import ssl_pretrain
from hvkit_plugins.stages.ssl_pretrain import SSLPretrain, encode_views, multi_view_loss


def test_joint_views_share_batch_statistics_and_separate_views_do_not() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.BatchNorm1d(4)).train()
    a, b = torch.randn(8, 5), torch.randn(8, 5) * 3 + 2  # two views with different statistics
    joint = encode_views(model, a, b, joint=True)
    separate = encode_views(model, a, b, joint=False)
    h_a, h_b = model[0](a), model[0](b)

    def standardise(h: torch.Tensor) -> torch.Tensor:  # BatchNorm's train-mode output at its initial affine
        return (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + 1e-5)

    both = standardise(torch.cat([h_a, h_b]))
    torch.testing.assert_close(joint[0], both[:8])
    torch.testing.assert_close(joint[1], both[8:])
    torch.testing.assert_close(separate[0], standardise(h_a))
    torch.testing.assert_close(separate[1], standardise(h_b))
    for z in separate:  # each view is centred and scaled on its own
        torch.testing.assert_close(z.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    assert not torch.allclose(joint[1].mean(0), torch.zeros(4), atol=1e-2)


def test_multi_view_loss_without_local_views_is_the_two_view_loss() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(16, 8), torch.randn(16, 8)
    vicreg = VICRegLoss()
    assert multi_view_loss(vicreg, [a, b]) == vicreg(a, b)


def test_multi_view_loss_averages_every_pair_that_holds_a_global_view() -> None:
    torch.manual_seed(2)
    g1, g2, l1, l2, l3 = (torch.randn(16, 8, dtype=torch.float64) for _ in range(5))
    vicreg = VICRegLoss()
    pairs = [(g1, g2), (g1, l1), (g1, l2), (g1, l3), (g2, l1), (g2, l2), (g2, l3)]  # never (l_i, l_j)
    expected = sum(vicreg(a, b) for a, b in pairs) / 7
    torch.testing.assert_close(multi_view_loss(vicreg, [g1, g2], [l1, l2, l3]), expected)


def test_multi_view_loss_needs_two_global_views() -> None:
    with pytest.raises(ValueError, match="2 global views"):
        multi_view_loss(VICRegLoss(), [torch.randn(4, 3)])


LOCAL = """
name: local
seed: 0
data: {name: cedar_and, synthetic_writers: 12, synthetic_samples_per_writer: 4, image_size: 32}
model: {backbone: small_cnn}
stages:
  pretrain:
    stage: ssl_pretrain
    head: {name: mlp, dims: [16, 16]}
    batch_size: 8
    local_views: 3
    local_size: 16
    train: {epochs: 1, max_steps: 2}
"""


def test_local_views_are_small_crops_each_compared_with_both_global_views(tmp_path: Path, monkeypatch) -> None:
    seen: list[tuple[list, list]] = []

    def spy(loss_fn, global_views, local_views=()):
        seen.append(([tuple(z.shape) for z in global_views], [tuple(z.shape) for z in local_views]))
        return multi_view_loss(loss_fn, global_views, local_views)

    sizes: list[int] = []
    monkeypatch.setattr(ssl_pretrain, "multi_view_loss", spy)
    monkeypatch.setattr(SmallCNN, "forward", _recording(SmallCNN.forward, sizes))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LOCAL)
    run(recipe, [], run_dir=tmp_path / "run", device="cpu", console=lambda _: None)
    assert seen == [([(8, 16), (8, 16)], [(8, 16)] * 3)] * 2
    assert sizes == [32, 16] * 2  # the two global views in one pass, then the three local views in one


def _recording(forward, sizes: list[int]):
    def wrapped(self, images):
        sizes.append(images.shape[-1])
        return forward(self, images)
    return wrapped


@pytest.mark.parametrize("kwargs", [{"local_views": -1}, {"local_size": 4}])
def test_local_view_settings_are_checked(kwargs: dict) -> None:
    with pytest.raises(ValueError, match="local_"):
        SSLPretrain(**kwargs)
