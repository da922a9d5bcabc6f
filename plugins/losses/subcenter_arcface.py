"""Sub-center ArcFace: ArcFace with K weight vectors per class (Deng et al., ECCV 2020)."""

from __future__ import annotations

import math

from pytorch_metric_learning import losses as pml_losses

from ._classifier import PMLClassifierLoss, check_scale, check_sizes
from .arcface import check_angular_margin


class SubCenterArcFaceLoss(PMLClassifierLoss):
    """Sub-center ArcFace: K sub-centers per class, margin in radians (Deng et al. 2020).

    Each class ``j`` has ``sub_centers`` weight vectors; its cosine is the largest over them,
    ``cos(theta_j) = max_k cos(x, W_jk)``, so noisy samples can settle on a non-dominant
    sub-center. The logits then follow ArcFace: ``s * cos(theta_y + m)`` for the target,
    ``s * cos(theta_j)`` for the others, mean cross-entropy. Paper defaults: ``K = 3``,
    ``m = 0.5`` rad, ``s = 64``. ``margin`` is in radians (PML's SubCenterArcFaceLoss, which
    this wraps, takes degrees; converted here). The weights ``W`` (embedding_dim,
    num_classes * K; column ``j*K + k`` is sub-center k of class j) are a parameter of the
    loss.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5,
                 scale: float = 64.0, sub_centers: int = 3) -> None:
        check_sizes(embedding_dim, num_classes)
        check_angular_margin(margin)
        check_scale(scale)
        if sub_centers < 1:
            raise ValueError(f"sub_centers must be at least 1 (the paper uses 3), got {sub_centers}")
        super().__init__(pml_losses.SubCenterArcFaceLoss(
            num_classes=num_classes, embedding_size=embedding_dim, margin=math.degrees(margin),
            scale=scale, sub_centers=sub_centers), embedding_dim, num_classes)
