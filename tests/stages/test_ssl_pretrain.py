"""Views through the encoder (one pass with shared BatchNorm statistics, or one per view), multi-crop, precise BN."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from hvkit.pipeline import run
from hvkit_plugins.backbones.small_cnn import SmallCNN
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.stages import ssl_pretrain
from hvkit_plugins.stages.encoder import Encoder, precise_batchnorm
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


def test_precise_batchnorm_sets_the_running_statistics_of_the_given_images() -> None:
    torch.manual_seed(3)
    encoder = nn.Sequential(nn.Flatten(), nn.Linear(16, 3), nn.BatchNorm1d(3, momentum=0.3), nn.ReLU(),
                            nn.Linear(3, 2), nn.BatchNorm1d(2)).eval()
    encoder[2].running_mean.fill_(5.0)
    weights = {k: v.clone() for k, v in encoder.state_dict().items() if "running" not in k and "tracked" not in k}
    images = torch.randint(0, 256, (40, 1, 4, 4), dtype=torch.uint8)
    precise_batchnorm(encoder, images, torch.device("cpu"), batch_size=64)
    hidden = encoder[1](images.float().div(255).flatten(1))
    torch.testing.assert_close(encoder[2].running_mean, hidden.mean(0))
    torch.testing.assert_close(encoder[2].running_var, hidden.var(0))  # unbiased, as BatchNorm keeps
    assert encoder[2].momentum == 0.3 and not encoder.training
    assert all(torch.equal(encoder.state_dict()[k], v) for k, v in weights.items())


def test_precise_batchnorm_averages_the_batches_statistics() -> None:
    torch.manual_seed(4)
    encoder = nn.Sequential(nn.Flatten(), nn.BatchNorm1d(4))
    images = torch.randint(0, 256, (30, 1, 2, 2), dtype=torch.uint8)
    precise_batchnorm(encoder, images, torch.device("cpu"), batch_size=10, seed=5)
    x = images.float().div(255).flatten(1)
    batches = [x[i] for i in torch.randperm(30, generator=torch.Generator().manual_seed(5)).split(10)]
    torch.testing.assert_close(encoder[1].running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(encoder[1].running_var, torch.stack([b.var(0) for b in batches]).mean(0))


def test_precise_bn_runs_on_every_pretraining_image_after_training(tmp_path: Path, monkeypatch) -> None:
    calls: list[tuple[type, int]] = []
    monkeypatch.setattr(ssl_pretrain, "precise_batchnorm",
                        lambda encoder, images, device: calls.append((type(encoder), len(images))))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(LOCAL.replace("local_views: 3", "local_views: 3\n    precise_bn: true"))
    run(recipe, [], run_dir=tmp_path / "run", device="cpu", console=lambda _: None)
    train = cedar_and(synthetic_writers=12, synthetic_samples_per_writer=4, image_size=32, seed=0).splits["train"]
    assert calls == [(Encoder, len(train))]
