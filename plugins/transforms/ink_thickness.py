"""Random ink-thickness change: grey-level dilation or erosion blended per sample."""

from __future__ import annotations

import torch

from .batched import check_interval, check_probability, chosen, dilate, uniform


class InkThickness:
    """Thicken or thin the strokes by a random amount per sample (ink is bright).

    With ``a ~ U(amount)``: ``x + a (dilate(x) - x)`` for ``a > 0`` and ``x + |a| (erode(x) - x)``
    for ``a < 0``, where dilate/erode are the max/min over a (2 radius + 1)^2 square (as
    max-pool/min-pool, see :func:`.batched.dilate`), so ``a = 1`` is a full dilation and ``a = 0``
    leaves the image untouched; applied with probability ``p``. Defaults ``amount=(-0.4, 0.6)``,
    ``radius=1``: a full 3 x 3 erosion would wipe out the 2-pixel strokes of 64 x 64 word images.
    """

    def __init__(self, amount: tuple[float, float] = (-0.4, 0.6), radius: int = 1, p: float = 1.0):
        check_interval("ink_thickness", "amount", amount, -1.0, 1.0)
        if radius < 1:
            raise ValueError(f"ink_thickness: radius={radius} must be >= 1 pixel")
        check_probability("ink_thickness", p)
        self.amount, self.radius, self.p = amount, radius, p

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n, dev = images.shape[0], images.device
        a = uniform(n, self.amount[0], self.amount[1], generator, dev)
        a = torch.where(chosen(n, self.p, generator, dev), a, 0.0).to(images.dtype).view(-1, 1, 1, 1)
        dilated = dilate(images, self.radius)
        eroded = -dilate(-images, self.radius)
        return images + a.clamp(min=0) * (dilated - images) + (-a).clamp(min=0) * (eroded - images)
