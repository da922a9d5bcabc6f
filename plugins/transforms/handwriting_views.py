"""The VICReg view augmentation for handwriting: crop + small affine in one resampling, then ink and noise."""

from __future__ import annotations

import torch

from .batched import resample
from .contrast_jitter import ContrastJitter
from .gaussian_blur import GaussianBlur
from .gaussian_noise import GaussianNoise
from .ink_thickness import InkThickness
from .random_affine import RandomAffine
from .random_resized_crop import RandomResizedCrop


class HandwritingViews:
    """One random view of each word image for self-supervised pre-training (call it twice for two views).

    A random resized crop (``crop_scale``, ``crop_ratio``) and a small affine (``degrees``,
    ``shear``, ``scale``, ``translate``) composed into a single bilinear resampling, then ink
    thickness (``ink``), contrast and gamma jitter (``contrast``, ``gamma``, p = 0.8), Gaussian
    blur with probability ``blur`` and Gaussian noise (``noise``). It replaces the ImageNet
    recipe SSL-HV used (VICRegTransform: flips, colour jitter, solarisation on 224 px RGB):
    no flips, no colour, and mild geometry, since slant, size and stroke width are part of a
    writer's style that the views should not wash out. Setting every strength to zero (and the
    crop to (1, 1), (1, 1)) gives the identity. ``with_geometry`` also returns where each view
    came from (VICRegL's location matching).
    """

    def __init__(self, crop_scale: tuple[float, float] = (0.7, 1.0), crop_ratio: tuple[float, float] = (0.8, 1.25),
                 degrees: float = 3.0, shear: float = 5.0, scale: tuple[float, float] = (0.9, 1.1),
                 translate: float = 0.05, ink: tuple[float, float] = (-0.3, 0.3), contrast: float = 0.3,
                 gamma: float = 0.3, blur: float = 0.2, noise: tuple[float, float] = (0.0, 0.02)):
        self.crop = RandomResizedCrop(crop_scale, crop_ratio)
        self.affine = RandomAffine(degrees, shear, scale, translate)
        self.pixelwise = (InkThickness(ink), ContrastJitter(contrast, 0.0, gamma, p=0.8),
                          GaussianBlur(p=blur), GaussianNoise(noise))

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return self.with_geometry(images, generator)[0]

    def with_geometry(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """The views and their output->input maps theta (B, 3, 3) in normalised coordinates (crop and affine).

        The same views as ``__call__`` for the same generator state; the pixel-wise steps move no pixel.
        """
        theta = self.affine.theta(images, generator) @ self.crop.theta(images, generator)
        images = resample(images, theta)
        for t in self.pixelwise:
            images = t(images, generator)
        return images, theta
