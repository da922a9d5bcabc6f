"""Random resized crop as a per-sample affine map (one batched grid_sample)."""

from __future__ import annotations

import math

import torch

from .batched import check_interval, check_probability, chosen, resample, uniform


class RandomResizedCrop:
    """Crop a random box of each image and resize it back to the full size (bilinear).

    The box covers a fraction ``a ~ U(scale)`` of the area with aspect ``w/h = exp(U(log ratio))``
    (each side capped at the full side) at a uniform position inside the image; with probability
    ``1 - p`` a sample is left whole. As an affine map from output to input coordinates:
    ``x_in = c + diag(w, h) x_out``. Defaults ``scale=(0.6, 1.0)``, ``ratio=(0.8, 1.25)``: milder
    than ImageNet's (0.08, 1.0), since a word must keep most of its letters.
    """

    def __init__(self, scale: tuple[float, float] = (0.6, 1.0), ratio: tuple[float, float] = (0.8, 1.25),
                 p: float = 1.0):
        check_interval("random_resized_crop", "scale", scale, 1e-3, 1.0)
        check_interval("random_resized_crop", "ratio", ratio, 1e-2, 1e2)
        check_probability("random_resized_crop", p)
        self.scale, self.ratio, self.p = scale, ratio, p

    def theta(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Output->input maps (B, 3, 3) in ``affine_grid`` coordinates for this batch."""
        n, dev = images.shape[0], images.device
        area = uniform(n, self.scale[0], self.scale[1], generator, dev)
        log_ratio = uniform(n, math.log(self.ratio[0]), math.log(self.ratio[1]), generator, dev)
        width = torch.sqrt(area * torch.exp(log_ratio)).clamp(max=1.0)
        height = torch.sqrt(area / torch.exp(log_ratio)).clamp(max=1.0)
        room = 1.0 - torch.stack([width, height], 1)
        centre = (2.0 * torch.rand(n, 2, generator=generator, device=dev) - 1.0) * room
        on = chosen(n, self.p, generator, dev)
        theta = torch.eye(3, device=dev).repeat(n, 1, 1)
        theta[:, 0, 0] = torch.where(on, width, 1.0)
        theta[:, 1, 1] = torch.where(on, height, 1.0)
        theta[:, :2, 2] = torch.where(on[:, None], centre, 0.0)
        return theta

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.with_geometry(images, generator)[0]

    def with_geometry(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The resampled images and their output->input maps theta (B, 3, 3), as ``__call__`` draws them."""
        theta = self.theta(images, generator)
        return resample(images, theta), theta
