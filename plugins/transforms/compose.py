"""Apply several transforms in order, all drawing from the same generator."""

from __future__ import annotations

import torch

from hvkit.api import Component


class Compose:
    """Apply ``transforms`` in the listed order: ``t_k(... t_1(x, g) ..., g)``.

    In a recipe each entry is a transform name or ``{name: ..., **params}``; at run time this
    factory receives them built.
    """

    def __init__(self, transforms: list[Component["transform"]]):
        if not transforms:
            raise ValueError("compose: transforms is empty; list at least one transform")
        for t in transforms:
            if not callable(t):
                raise ValueError(f"compose: {t!r} is not a built transform (callable(images, generator))")
        self.transforms = list(transforms)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        for t in self.transforms:
            images = t(images, generator)
        return images
