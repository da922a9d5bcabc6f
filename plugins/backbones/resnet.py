"""ResNet-18, -34 and -50 (torchvision, randomly initialised) as feature extractors for small grey images."""

from __future__ import annotations

from typing import Callable, ClassVar

import torch
from torch import nn
from torchvision.models import ResNet as TorchvisionResNet
from torchvision.models import resnet18, resnet34, resnet50


class ResNet(nn.Module):
    """A torchvision ResNet without its classifier: images (B, in_channels, H, W) -> (B, embedding_dim).

    He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016); ResNet-18 is the
    encoder of SSL-HV. Built with ``weights=None`` (nothing is downloaded). The first
    convolution takes ``in_channels`` (context: the dataset's channel count); ``small_stem``
    replaces the 7x7/2 convolution and the max-pool by a 3x3/1 convolution (the CIFAR variant),
    keeping 4x more resolution for 32-64 px inputs (8 x 8 before the pooling at 64 px instead
    of 2 x 2); ``max_pool=False`` drops only the max-pool after the standard stem, and
    ``stem_stride=1`` makes the 7x7 convolution dense: each gives 2x more resolution in every
    later layer (4 x 4 before the pooling at 64 px) for 4x the compute, with the same weights
    as the standard network — so a backbone pre-trained with the standard stem can be
    fine-tuned and evaluated at a higher feature resolution (the same move as training and
    testing at different input sizes: Touvron et al. 2019, "Fixing the train-test resolution
    discrepancy"); ``zero_init_residual`` starts each residual branch's last BN at zero
    (Goyal et al. 2017). ``feature_map`` is layer4's output (``map_channels`` = ``embedding_dim``
    channels, 1/32 of the input's side with the standard stem) and ``pool`` its global average:
    ``pool(feature_map(x))`` is ``forward(x)``. Subclasses pick the depth.
    """

    name: ClassVar[str]
    builder: ClassVar[Callable[..., TorchvisionResNet]]

    def __init__(self, in_channels: int = 1, small_stem: bool = False, max_pool: bool = True,
                 stem_stride: int = 2, zero_init_residual: bool = False):
        super().__init__()
        if in_channels < 1:
            raise ValueError(f"{self.name}: in_channels={in_channels} must be >= 1")
        if stem_stride not in (1, 2):
            raise ValueError(f"{self.name}: stem_stride={stem_stride} must be 1 or 2")
        net = type(self).builder(weights=None, zero_init_residual=zero_init_residual)
        if small_stem or in_channels != 3 or stem_stride != 2:
            kernel, stride = (3, 1) if small_stem else (7, stem_stride)
            net.conv1 = nn.Conv2d(in_channels, 64, kernel, stride=stride, padding=kernel // 2, bias=False)
            nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")  # as torchvision
        if small_stem or not max_pool:
            net.maxpool = nn.Identity()
        self.embedding_dim = self.map_channels = net.fc.in_features
        net.fc = nn.Identity()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images)

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The last residual stage's output (B, map_channels, h, w), before the global pooling."""
        net = self.net
        x = net.maxpool(net.relu(net.bn1(net.conv1(images))))
        return net.layer4(net.layer3(net.layer2(net.layer1(x))))

    def pool(self, maps: torch.Tensor) -> torch.Tensor:
        """Features (B, embedding_dim) of a ``feature_map``: its global average, as ``forward``."""
        return torch.flatten(self.net.avgpool(maps), 1)


class ResNet18(ResNet):
    """ResNet-18 (basic blocks 2-2-2-2, 512-d features), SSL-HV's encoder; denser stems by option (see ResNet)."""

    name, builder = "resnet18", staticmethod(resnet18)


class ResNet34(ResNet):
    """ResNet-34 (basic blocks 3-4-6-3, 512-d features); denser stems by option (see ResNet)."""

    name, builder = "resnet34", staticmethod(resnet34)


class ResNet50(ResNet):
    """ResNet-50 (bottleneck blocks 3-4-6-3, 2048-d features); denser stems by option (see ResNet)."""

    name, builder = "resnet50", staticmethod(resnet50)
