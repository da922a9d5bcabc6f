"""Additive Gaussian pixel noise with a random standard deviation per sample."""

from __future__ import annotations

import torch

from .batched import check_interval, check_probability, chosen, uniform


class GaussianNoise:
    """``clip(x + s * N(0, 1), 0, 1)`` with ``s ~ U(std)`` per sample, applied with probability ``p``.

    Default ``std=(0.0, 0.03)``: scanner grain, small next to the ink (0.6-1.0).
    """

    def __init__(self, std: tuple[float, float] = (0.0, 0.03), p: float = 1.0):
        check_interval("gaussian_noise", "std", std, 0.0, 1.0)
        check_probability("gaussian_noise", p)
        self.std, self.p = std, p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = images.shape[0], images.device
        s = uniform(n, self.std[0], self.std[1], generator, dev)
        s = torch.where(chosen(n, self.p, generator, dev), s, 0.0).to(images.dtype).view(-1, 1, 1, 1)
        noise = torch.randn(images.shape, generator=generator, device=dev, dtype=images.dtype)
        return (images + s * noise).clamp(0.0, 1.0)
