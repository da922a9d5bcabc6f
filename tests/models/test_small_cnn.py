"""SmallCNN backbone: contract, dimensions, architecture and errors."""

from __future__ import annotations

import pytest
import torch

from hvkit.testing import check_backbone
from hvkit_plugins.backbones.small_cnn import SmallCNN


@pytest.mark.parametrize("params", [{}, {"embedding_dim": 32, "width": 8, "depth": 2}])
def test_contract_for_one_and_three_channels(params: dict) -> None:
    check_backbone(SmallCNN, params, in_channels=(1, 3), image_size=32)


def test_shapes_and_channel_widths() -> None:
    net = SmallCNN(in_channels=1, embedding_dim=64, width=16, depth=5)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128, 128]  # capped at 8 * width
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in net.modules()) == 4
    assert net.embedding_dim == 64 and net(torch.rand(3, 1, 64, 64)).shape == (3, 64)
    assert net(torch.rand(2, 1, 17, 23)).shape == (2, 64)  # global pooling: any size


def test_invalid_settings() -> None:
    with pytest.raises(ValueError, match="small_cnn"):
        SmallCNN(embedding_dim=0)
    with pytest.raises(ValueError, match="small_cnn"):
        SmallCNN(depth=0)
