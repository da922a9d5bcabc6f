"""DINO's projection head: an MLP to an L2-normalised bottleneck, then K weight-normalised prototypes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class DINOHead(nn.Module):
    """DINO head (Caron et al. 2021): MLP → L2-normalised bottleneck → K weight-normalised prototypes.

    ``in_dim → hidden_dim → … → bottleneck_dim`` over ``layers`` linear layers with GELU between
    them (and BatchNorm before each GELU when ``batch_norm``, DINO's ``use_bn_in_head``), then
    ``x / ||x||`` and a bias-free weight-normalised linear layer: ``logit_k = g_k x . v_k / ||v_k||``
    for the ``out_dim`` = K prototypes v_k. With ``norm_last_layer`` (DINO's default) g_k = 1 is
    fixed, so each logit is a cosine in [-1, 1]; otherwise g is learnt, starting at 1. Linear
    layers start from a truncated normal of std 0.02, as DINO's. Defaults: hidden 2048 and
    bottleneck 256 as the paper's, K = 4096 (the paper's 65536 is sized for ImageNet's 1.3M
    images; a handwriting set of thousands of images needs far fewer prototypes). Used as the
    ``head`` of ``ssl_pretrain`` with the ``dino`` loss, so the momentum teacher holds an EMA
    copy of it. DINO freezes this last layer during the first epoch: in ``ssl_pretrain``,
    ``train.frozen_epochs: {encoder.head.prototypes: 1}`` (and ``encoder.head.scale: 1`` when
    ``norm_last_layer`` is false).
    """

    def __init__(self, in_dim: int = 512, out_dim: int = 4096, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, batch_norm: bool = False, norm_last_layer: bool = True) -> None:
        super().__init__()
        if in_dim < 1:
            raise ValueError(f"dino_head: in_dim must be >= 1, got {in_dim}")
        if min(out_dim, hidden_dim, bottleneck_dim) < 1:
            raise ValueError(f"dino_head: out_dim={out_dim}, hidden_dim={hidden_dim} and bottleneck_dim="
                             f"{bottleneck_dim} must all be >= 1")
        if layers < 1:
            raise ValueError(f"dino_head: layers must be at least 1, got {layers}; DINO uses 3")
        sizes = [in_dim] + [hidden_dim] * (layers - 1) + [bottleneck_dim]
        blocks: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            blocks.append(nn.Linear(a, b))
            if i < layers - 1:
                blocks += [nn.BatchNorm1d(b), nn.GELU()] if batch_norm else [nn.GELU()]
        self.mlp = nn.Sequential(*blocks)
        for layer in self.mlp:
            if isinstance(layer, nn.Linear):
                nn.init.trunc_normal_(layer.weight, std=0.02)
                nn.init.zeros_(layer.bias)
        self.prototypes = nn.Parameter(nn.init.trunc_normal_(torch.empty(out_dim, bottleneck_dim), std=0.02))
        self.scale = None if norm_last_layer else nn.Parameter(torch.ones(out_dim))
        self.out_dim = out_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = F.normalize(self.mlp(x), dim=1) @ F.normalize(self.prototypes, dim=1).T
        return logits if self.scale is None else logits * self.scale
