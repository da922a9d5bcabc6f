"""Test-time augmentation: an image's embedding averaged over fixed shifted and zoomed copies."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F


@dataclass
class TestViews:
    """Fixed views of each image whose embeddings are averaged (test-time augmentation).

    With ``shifts`` = s > 0 pixels the image is also moved by s to the left, right, up and
    down (4 views); each factor z of ``zooms`` magnifies it by z about its centre (z < 1
    shrinks). Pixels moved in from outside repeat the border (the paper's background), so the
    transform needs no knowledge of the ink's polarity. The embedding is the mean over the
    image itself and its ``4·[s > 0] + len(zooms)`` views, ``e(x) = mean_v f(T_v x)``: the
    same words read with the small offsets and scales the training views taught the network
    to ignore. Defaults: no view, the image alone.
    """

    __test__ = False  # a recipe option, not a pytest class

    shifts: int = 0
    zooms: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.shifts < 0:
            raise ValueError(f"tta.shifts={self.shifts} must be >= 0 pixels (0: no shifted views)")
        if any(z <= 0 for z in self.zooms):
            raise ValueError(f"tta.zooms={self.zooms} must all be > 0 (1.1 magnifies by 10%)")

    @property
    def count(self) -> int:
        """How many images each embedding averages over, the image itself included."""
        return 1 + (4 if self.shifts else 0) + len(self.zooms)

    def transforms(self, height: int, width: int) -> torch.Tensor:
        """The views' output→input maps (V, 2, 3) in ``affine_grid``'s normalised coordinates.

        A shift of ``(dx, dy)`` pixels samples the input at ``x − 2dx / W``, ``y − 2dy / H``; a
        zoom by z samples it at ``(x / z, y / z)``.
        """
        sx, sy = 2.0 * self.shifts / width, 2.0 * self.shifts / height
        moves = [(-sx, 0.0), (sx, 0.0), (0.0, -sy), (0.0, sy)] if self.shifts else []
        maps = [[[1.0, 0.0, tx], [0.0, 1.0, ty]] for tx, ty in moves]
        maps += [[[1.0 / z, 0.0, 0.0], [0.0, 1.0 / z, 0.0]] for z in self.zooms]
        return torch.tensor(maps, dtype=torch.float32).reshape(-1, 2, 3)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """The images (B, C, H, W) then each view of them, stacked view by view: ``(count · B, C, H, W)``."""
        if self.count == 1:
            return images
        b, c, h, w = images.shape
        theta = self.transforms(h, w).to(images.device).repeat_interleave(b, dim=0)
        grid = F.affine_grid(theta, [theta.shape[0], c, h, w], align_corners=False)
        views = F.grid_sample(images.float().repeat(self.count - 1, 1, 1, 1), grid, mode="bilinear",
                              padding_mode="border", align_corners=False)
        return torch.cat([images, views.to(images.dtype)])

    def average(self, embeddings: torch.Tensor) -> torch.Tensor:
        """``(count · B, D)`` embeddings of :meth:`apply`'s output → their mean per image, (B, D)."""
        return embeddings.reshape(self.count, -1, embeddings.shape[-1]).mean(0)
