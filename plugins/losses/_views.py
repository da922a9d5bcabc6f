"""Shared input check of the two-view (self-supervised) losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def check_views(loss: str, z_a: torch.Tensor, z_b: torch.Tensor, min_batch: int = 1,
                local_views: Sequence[torch.Tensor] = ()) -> None:
    """Raise ValueError unless ``z_a``, ``z_b`` and every local view are (B, D) of one shape with ``B >= min_batch``."""
    if z_a.ndim != 2 or z_a.shape != z_b.shape:
        raise ValueError(f"{loss}: expected two (B, D) views of one shape, got {tuple(z_a.shape)} "
                         f"and {tuple(z_b.shape)}")
    if z_a.shape[0] < min_batch:
        raise ValueError(f"{loss}: needs a batch of at least {min_batch}, got {z_a.shape[0]}; "
                         "raise the batch size")
    for z in local_views:
        if z.shape != z_a.shape:
            raise ValueError(f"{loss}: a local view has shape {tuple(z.shape)}, the global views "
                             f"{tuple(z_a.shape)}; every view needs the same (B, D)")
