"""Random ink contrast, background brightness and gamma per sample."""

from __future__ import annotations

import torch

from .batched import check_probability, chosen, uniform


class ContrastJitter:
    """Jitter ink intensity, paper tone and gamma: ``clip(c * x ** g + b, 0, 1)`` per sample.

    ``c ~ U(1 - contrast, 1 + contrast)`` scales the (bright) ink, ``b ~ U(-brightness,
    brightness)`` shifts everything (a greyer paper when positive), ``g = exp(U(-gamma, gamma))``
    bends the grey levels (pen pressure, scanner response); applied with probability ``p``.
    The background 0 stays 0 unless ``brightness > 0``. Defaults: 0.3, 0.0, 0.3, p = 0.8.
    """

    def __init__(self, contrast: float = 0.3, brightness: float = 0.0, gamma: float = 0.3, p: float = 0.8):
        if not 0 <= contrast <= 1 or not 0 <= brightness <= 1 or not 0 <= gamma <= 3:
            raise ValueError(f"contrast_jitter: need contrast in [0, 1], brightness in [0, 1] and gamma in [0, 3] "
                             f"(got {contrast}, {brightness}, {gamma})")
        check_probability("contrast_jitter", p)
        self.contrast, self.brightness, self.gamma, self.p = contrast, brightness, gamma, p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = images.shape[0], images.device
        c = uniform(n, 1 - self.contrast, 1 + self.contrast, generator, dev)
        b = uniform(n, -self.brightness, self.brightness, generator, dev)
        g = torch.exp(uniform(n, -self.gamma, self.gamma, generator, dev))
        on = chosen(n, self.p, generator, dev)
        c, b, g = (torch.where(on, v, ident).to(images.dtype).view(-1, 1, 1, 1)
                   for v, ident in ((c, 1.0), (b, 0.0), (g, 1.0)))
        return (c * images.clamp(min=0.0) ** g + b).clamp(0.0, 1.0)
