"""Shared input check of the two-view (self-supervised) losses."""

from __future__ import annotations

import torch


def check_views(loss: str, z_a: torch.Tensor, z_b: torch.Tensor, min_batch: int = 1) -> None:
    """Raise ValueError unless ``z_a`` and ``z_b`` are (B, D) of one shape with ``B >= min_batch``."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"{loss}: expected two (B, D) views of one shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if z_a.shape[0] < min_batch:
        raise ValueError(f"{loss}: needs a batch of at least {min_batch}, got {z_a.shape[0]}; "
                         "raise the batch size")
