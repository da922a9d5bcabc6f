"""A single linear projection head."""

from __future__ import annotations

import torch
from torch import nn


class Linear(nn.Module):
    """``y = W x + b``: (B, in_dim) -> (B, out_dim). Default 128 outputs, with bias."""

    def __init__(self, in_dim: int = 512, out_dim: int = 128, bias: bool = True):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"linear: in_dim must be >= 1, got {in_dim}")
        if out_dim < 1:
            raise ValueError(f"linear: out_dim must be >= 1, got {out_dim}")
        self.linear = nn.Linear(in_dim, out_dim, bias=bias)
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)
