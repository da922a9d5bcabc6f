"""A small, fast convolutional encoder for CPU runs and CI."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class SmallCNN(nn.Module):
    """Small fast CNN encoder (conv-BN-ReLU blocks, global pooling) for CPU runs and CI.

    ``depth`` conv3x3-norm-ReLU blocks, each but the last followed by a 2x2 max-pool, then global
    average pooling and a linear map to ``embedding_dim``. Block ``i`` has ``width * 2**i``
    channels (capped at ``8 * width``). Defaults: 4 blocks of 32-256 channels, 128-d embedding,
    about 0.4 M parameters. ``norm``: BatchNorm (default), GroupNorm (8 groups; per sample, so
    several processes compute what one does without synchronising statistics) or none.
    ``feature_map`` is the last block's output (``map_channels`` channels, 1/2^(depth-1) of the
    input's side) and ``pool`` the global average and the linear map: ``pool(feature_map(x))``
    is ``forward(x)``.
    """

    def __init__(self, in_channels: int = 1, embedding_dim: int = 128, width: int = 32, depth: int = 4,
                 norm: Literal["batch", "group", "none"] = "batch"):
        super().__init__()
        if norm not in ("batch", "group", "none"):
            raise ValueError(f"small_cnn: norm must be 'batch', 'group' or 'none', got {norm!r}")
        if in_channels < 1:
            raise ValueError(f"small_cnn: in_channels must be >= 1, got {in_channels}")
        if embedding_dim < 1 or width < 1 or depth < 1:
            raise ValueError(f"small_cnn: embedding_dim, width and depth must be >= 1 "
                             f"(got {embedding_dim}, {width}, {depth})")
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(depth):
            out = min(width * 2 ** i, 8 * width)
            layers += [nn.Conv2d(channels, out, 3, padding=1, bias=norm == "none"), _norm(norm, out), nn.ReLU(inplace=True)]
            if i < depth - 1:
                layers.append(nn.MaxPool2d(2))
            channels = out
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.project = nn.Linear(channels, embedding_dim)
        self.embedding_dim = embedding_dim
        self.map_channels = channels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.project(self.features(images))

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last block's output (B, map_channels, h, w), before the global pooling."""
        return self.features[:-2](images)

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Features (B, embedding_dim) of a ``feature_map``: global average, then the linear map."""
        return self.project(self.features[-2:](maps))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    return nn.Identity()
