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


def identity_predictor(loss: nn.Module) -> nn.Module:
    """Weights [I; -I] and [I, -I] (no bias): on a batch whose columns have mean 0 and variance 1, BatchNorm
    leaves z (almost) as it is and h(z) = relu(z') - relu(-z') = z' with z' = z / sqrt(1 + eps), a positive
    multiple of z. Needs ``predictor_dim = 2 * embedding_dim``."""
    first, _, _, last = loss.predictor
    eye = torch.eye(loss.embedding_dim, dtype=first.weight.dtype)
    with torch.no_grad():
        first.weight.copy_(torch.cat([eye, -eye]))
        last.weight.copy_(torch.cat([eye, -eye], dim=1))
        if last.bias is not None:
            last.bias.zero_()
    return loss


def standardised(z: torch.Tensor) -> torch.Tensor:
    """``z`` with every column at mean 0 and (biased) variance 1, as BatchNorm's batch statistics see it."""
    return (z - z.mean(0)) / z.std(0, unbiased=False)
