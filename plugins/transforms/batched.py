"""Batched primitives shared by the transforms: per-sample random draws, affine resampling, checks.

Every transform draws all of a batch's random parameters in one call from the given
:class:`torch.Generator` (which must live on the images' device), so a batch costs a handful
of tensor operations whatever its size, and a run replays exactly from the generator's seed.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


def check_interval(transform: str, key: str, values: Sequence[float], low: float, high: float) -> None:
    """Raise ValueError unless ``values`` is ``[a, b]`` with ``low <= a <= b <= high``."""
    if len(values) != 2 or not low <= values[0] <= values[1] <= high:
        raise ValueError(f"{transform}: {key}={list(values)} must be [min, max] with {low} <= min <= max <= {high}")


def check_probability(transform: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{transform}: p={p} must be a probability in [0, 1]")


def uniform(n: int, low: float, high: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` draws from U(low, high) (float32, on ``device``)."""
    return low + (high - low) * torch.rand(n, generator=generator, device=device)


def chosen(n: int, p: float, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Which of ``n`` samples a transform applied with probability ``p`` touches (bool (n,))."""
    return torch.rand(n, generator=generator, device=device) < p


def resample(images: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Bilinear resampling by per-sample output->input maps ``theta`` (B, 3, 3) in normalised coordinates.

    Outside the image is background (0, ink is bright), as for a word on blank paper. Samples
    whose map is the identity are returned exactly as they are (no resampling round-off).
    """
    grid = F.affine_grid(theta[:, :2].to(images.dtype), list(images.shape), align_corners=False)
    out = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    identity = (theta == torch.eye(3, dtype=theta.dtype, device=theta.device)).all(2).all(1)
    return torch.where(identity.view(-1, 1, 1, 1), images, out)


def pixel_to_normalised(matrix: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Express (B, 2, 2) linear maps acting on pixel offsets in ``affine_grid``'s [-1, 1] coordinates."""
    scale = torch.tensor([width / 2.0, height / 2.0], dtype=matrix.dtype, device=matrix.device)
    return matrix * scale[None, None, :] / scale[None, :, None]


def dilate(images: torch.Tensor, radius: int) -> torch.Tensor:
    """Grey-level dilation: the max over each pixel's (2 radius + 1)^2 square (outside ignored).

    Equal to ``max_pool2d(images, 2 radius + 1, 1, radius)``, done separably with shifted
    maxima, which is several times faster than ``max_pool2d`` on one-channel CPU batches.
    """
    h, w = images.shape[-2:]
    padded = F.pad(images, (radius, radius, 0, 0), value=float("-inf"))
    rows = padded[..., :, :w]
    for k in range(1, 2 * radius + 1):
        rows = torch.maximum(rows, padded[..., :, k:k + w])
    padded = F.pad(rows, (0, 0, radius, radius), value=float("-inf"))
    out = padded[..., :h, :]
    for k in range(1, 2 * radius + 1):
        out = torch.maximum(out, padded[..., k:k + h, :])
    return out
