"""Float64 reference for the losses with a prediction MLP (SimSiam, BYOL, MoCo v3), and their test views."""

from __future__ import annotations

import torch
from torch import nn


def fix_predictor(loss: nn.Module, seed: int) -> nn.Module:
    """Give ``loss.predictor``'s BatchNorm an affine that is not the identity, so every weight shows in the value."""
    bn = loss.predictor[1]
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        bn.weight.copy_(0.5 + torch.rand(bn.num_features, generator=g))
        bn.bias.copy_(0.3 * torch.randn(bn.num_features, generator=g))
    return loss


def views(n: int, d: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """Two correlated (n, d) views, not centred, both requiring gradients."""
    g = torch.Generator().manual_seed(n * 100 + d)
    a = 1.5 + 2.0 * torch.randn(n, d, generator=g, dtype=dtype)
    b = 0.7 * a + torch.randn(n, d, generator=g, dtype=dtype)
    return a.requires_grad_(), b.requires_grad_()


def predict(loss: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The predictor's output in float64 from its weights: BatchNorm in training mode (batch mean, biased variance)."""
    first, bn, _, last = loss.predictor
    h = z.double() @ first.weight.double().T
    h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight.double() + bn.bias.double()
    out = h.clamp(min=0) @ last.weight.double().T
    return out if last.bias is None else out + last.bias.double()
