"""Random small affine: rotation, horizontal shear (slant), isotropic scale and translation per sample."""

from __future__ import annotations

import torch

from .batched import check_interval, check_probability, chosen, pixel_to_normalised, resample, uniform


class RandomAffine:
    """Per-sample random rotation, slant (x-shear), scale and shift, applied in one grid_sample.

    Forward map about the image centre, in pixel units: ``x' = R(a) Sh(s) (c x) + t`` with
    ``a ~ U(-degrees, degrees)``, ``s ~ U(-shear, shear)`` (``Sh = [[1, tan s], [0, 1]]``, a
    change of slant), ``c ~ U(scale)``, ``t ~ U(-translate, translate) * (W, H)``; applied with
    probability ``p`` per sample. Bilinear, background 0. No flips: mirrored handwriting is
    not handwriting. Defaults: 5 degrees, 10 degrees of shear, scale [0.9, 1.1], 5 % shift.
    """

    def __init__(self, degrees: float = 5.0, shear: float = 10.0, scale: tuple[float, float] = (0.9, 1.1),
                 translate: float = 0.05, p: float = 1.0):
        if not 0 <= degrees <= 180 or not 0 <= shear < 90:
            raise ValueError(f"random_affine: degrees={degrees} must be in [0, 180] and shear={shear} in [0, 90)")
        check_interval("random_affine", "scale", scale, 1e-3, 1e3)
        if not 0 <= translate <= 1:
            raise ValueError(f"random_affine: translate={translate} must be a fraction of the size in [0, 1]")
        check_probability("random_affine", p)
        self.degrees, self.shear, self.scale, self.translate, self.p = degrees, shear, scale, translate, p

    def theta(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Output->input maps (B, 3, 3) in ``affine_grid`` coordinates for this batch."""
        n, dev = images.shape[0], images.device
        angle = torch.deg2rad(uniform(n, -self.degrees, self.degrees, generator, dev))
        slant = torch.tan(torch.deg2rad(uniform(n, -self.shear, self.shear, generator, dev)))
        zoom = uniform(n, self.scale[0], self.scale[1], generator, dev)
        shift = uniform(2 * n, -self.translate, self.translate, generator, dev).view(n, 2) * 2.0
        on = chosen(n, self.p, generator, dev)
        cos, sin = torch.cos(angle), torch.sin(angle)
        linear = torch.stack([torch.stack([cos, cos * slant - sin], -1),
                              torch.stack([sin, sin * slant + cos], -1)], -2) * zoom[:, None, None]
        linear = pixel_to_normalised(linear, images.shape[-2], images.shape[-1])
        forward = torch.eye(3, device=dev).repeat(n, 1, 1)
        forward[:, :2, :2] = linear
        forward[:, :2, 2] = shift
        forward[~on] = torch.eye(3, device=dev)
        return torch.linalg.inv(forward)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.with_geometry(images, generator)[0]

    def with_geometry(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The resampled images and their output->input maps theta (B, 3, 3), as ``__call__`` draws them."""
        theta = self.theta(images, generator)
        return resample(images, theta), theta
