"""L2 normalisation head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Normalize(nn.Module):
    """``y = x / max(||x||_2, eps)`` per row: embeddings on the unit sphere, (B, in_dim) -> (B, in_dim)."""

    def __init__(self, in_dim: int = 512, eps: float = 1e-12):
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"normalize: in_dim must be >= 1, got {in_dim}")
        if not eps > 0:
            raise ValueError(f"normalize: eps must be > 0, got {eps}")
        self.out_dim = in_dim
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x, p=2.0, dim=1, eps=self.eps)
