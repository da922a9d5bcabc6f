"""Hand-crafted features a chunk of images at a time, so that memory stays bounded at any image size."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

CHUNK_PIXELS = 2 ** 22
"""Pixels per chunk by default: 1,024 images of 64 × 64, 84 of 224 × 224."""


def in_chunks(images: torch.Tensor, extract: Callable[[np.ndarray], np.ndarray], chunk: int | None) -> torch.Tensor:
    """``extract`` applied to (N, C, H, W) images a chunk at a time, as float64 arrays: (N, D) float32.

    ``chunk`` images at a time, by default as many as hold ``CHUNK_PIXELS`` pixels.
    """
    size = chunk or max(1, CHUNK_PIXELS // (images.shape[2] * images.shape[3]))
    parts = [extract(images[start:start + size].cpu().numpy().astype(np.float64))
             for start in range(0, len(images), size)]
    return torch.from_numpy(np.concatenate(parts).astype(np.float32))
