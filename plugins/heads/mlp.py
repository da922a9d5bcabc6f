"""Multi-layer perceptron head: Linear-BN-ReLU blocks, e.g. the VICReg expander."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Linear layers of sizes ``dims`` with BatchNorm + ReLU between them: (B, in_dim) -> (B, dims[-1]).

    ``in_dim -> dims[0] -> ... -> dims[-1]``; every layer but the last is followed by
    BatchNorm1d and ReLU, the last by BatchNorm1d (no affine) only when ``last_bn``. The
    VICReg expander (Bardes et al., ICLR 2022) is ``dims=[2048, 2048, 2048]`` (their default
    is 8192 wide); SSL-HV used two 2048 layers. Default: the VICReg expander at 2048.
    """

    def __init__(self, in_dim: int = 512, dims: tuple[int, ...] = (2048, 2048, 2048), last_bn: bool = False):
        super().__init__()
        dims = list(dims)
        if in_dim < 1:
            raise ValueError(f"mlp: in_dim must be >= 1, got {in_dim}")
        if not dims or min(dims) < 1:
            raise ValueError(f"mlp: dims={dims} must be a non-empty list of sizes >= 1")
        layers: list[nn.Module] = []
        sizes = [in_dim] + dims
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            last = i == len(dims) - 1
            layers.append(nn.Linear(a, b, bias=not (last and last_bn)))
            if not last:
                layers += [nn.BatchNorm1d(b), nn.ReLU(inplace=True)]
            elif last_bn:
                layers.append(nn.BatchNorm1d(b, affine=False))
        self.layers = nn.Sequential(*layers)
        self.out_dim = dims[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)
