"""Raw pixels, the study's weakest baseline."""

from __future__ import annotations

import torch


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Raw-pixel features: flattened images in [0, 1] (the study's weakest baseline)."""
    return images.float().div(255.0).flatten(1)
