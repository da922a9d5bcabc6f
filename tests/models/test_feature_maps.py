"""Backbones that offer their last feature map: pooling it gives ``forward`` exactly; the encoder's map mode."""

from __future__ import annotations

import pytest
import torch

from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit_plugins.backbones.small_cnn import SmallCNN
from hvkit_plugins.heads.mlp import MLP
from hvkit_plugins.stages.encoder import Encoder

# every registered backbone with a feature_map, with settings to try and the map side at 64 px
SPECS = {
    "resnet18": [({}, 2), ({"max_pool": False}, 4), ({"small_stem": True}, 8)],
    "resnet34": [({}, 2)],
    "resnet50": [({}, 2)],
    "small_cnn": [({}, 8), ({"depth": 3, "norm": "group"}, 16)],
    "torchvision": [({"arch": "mobilenet_v3_small"}, 2), ({"arch": "densenet121"}, 2), ({"arch": "squeezenet1_1"}, 3)],
}
CASES = [(name, params, side) for name, specs in SPECS.items() for params, side in specs]


def test_every_backbone_that_offers_a_map_is_checked_here() -> None:
    registry = get_registry()
    offering = {n for n in registry.names("backbone") if hasattr(registry.get("backbone", n).factory, "feature_map")}
    assert offering == set(SPECS)


@pytest.mark.parametrize("name, params, side", CASES, ids=[f"{n}-{p}" for n, p, _ in CASES])
@pytest.mark.parametrize("training", [False, True])
def test_pooling_the_map_is_forward_exactly(name: str, params: dict, side: int, training: bool) -> None:
    torch.manual_seed(0)
    backbone = build(get_registry(), "backbone", {"name": name, **params}, in_channels=1).train(training)
    x = torch.rand(3, 1, 64, 64)
    maps = backbone.feature_map(x)
    assert maps.shape == (3, backbone.map_channels, side, side)
    pooled = backbone.pool(maps)
    assert pooled.shape == (3, backbone.embedding_dim)
    assert torch.equal(pooled, backbone(x))


def test_the_encoder_gives_the_head_output_and_the_map_in_one_pass() -> None:
    torch.manual_seed(0)
    encoder = Encoder(SmallCNN(), MLP(128, (16, 8))).eval()
    x = torch.rand(4, 1, 32, 32)
    out, maps = encoder(x, "head_and_map")
    assert torch.equal(out, encoder(x)) and torch.equal(maps, encoder.backbone.feature_map(x))
    bare = Encoder(encoder.backbone)
    out, maps = bare(x, "head_and_map")
    assert torch.equal(out, bare(x)) and maps.shape == (4, 256, 4, 4)
