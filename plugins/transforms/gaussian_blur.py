"""Gaussian blur with a random sigma per sample (one grouped separable convolution)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .batched import check_interval, check_probability, chosen, uniform


class GaussianBlur:
    """Blur each sample with a Gaussian of ``sigma ~ U(sigma)`` pixels, with probability ``p``.

    Separable ``kernel_size`` taps, ``k(t) ∝ exp(-t^2 / (2 sigma^2))``, zero (background)
    padding; samples not chosen get the unit impulse, i.e. stay exactly as they are. Defaults
    ``sigma=(0.1, 1.0)``, ``kernel_size=5``, ``p=0.3`` (a softer pen or a blurrier scan).
    """

    def __init__(self, sigma: tuple[float, float] = (0.1, 1.0), kernel_size: int = 5, p: float = 0.3):
        check_interval("gaussian_blur", "sigma", sigma, 0.0, 100.0)
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"gaussian_blur: kernel_size={kernel_size} must be a positive odd number")
        check_probability("gaussian_blur", p)
        self.sigma, self.kernel_size, self.p = sigma, kernel_size, p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, c, h, w = images.shape
        dev = images.device
        sigma = uniform(n, self.sigma[0], self.sigma[1], generator, dev)
        sigma = torch.where(chosen(n, self.p, generator, dev), sigma, 0.0).clamp(min=1e-6)
        t = torch.arange(self.kernel_size, device=dev, dtype=torch.float32) - self.kernel_size // 2
        kernel = torch.exp(-t[None] ** 2 / (2 * sigma[:, None] ** 2))
        kernel = (kernel / kernel.sum(1, keepdim=True)).to(images.dtype).repeat_interleave(c, 0)
        r = self.kernel_size // 2
        x = images.reshape(1, n * c, h, w)
        x = F.conv2d(x, kernel.view(n * c, 1, -1, 1), padding=(r, 0), groups=n * c)
        x = F.conv2d(x, kernel.view(n * c, 1, 1, -1), padding=(0, r), groups=n * c)
        return x.view(n, c, h, w)
