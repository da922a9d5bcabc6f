"""Sub-center ArcFace: ArcFace with K weight vectors per class (Deng et al., ECCV 2020)."""

from __future__ import annotations

import torch

from ._classifier import AdditiveMarginLoss
from .arcface import angular_margin_cosine, check_angular_margin


class SubCenterArcFaceLoss(AdditiveMarginLoss):
    """Sub-center ArcFace: K sub-centers per class, margin in radians (Deng et al. 2020).

    Each class ``j`` has ``sub_centers`` weight vectors; its cosine is the largest over them,
    ``cos(theta_j) = max_k cos(x, w_jk)``, so noisy samples can settle on a non-dominant
    sub-center. The logits then follow ArcFace: ``s cos(theta_y + m)`` for the target,
    ``s cos(theta_j)`` for the others, mean cross-entropy. Paper defaults: ``K = 3``,
    ``m = 0.5`` rad, ``s = 64``. Equal, value and gradient, to pytorch-metric-learning's
    SubCenterArcFaceLoss, which takes the margin in degrees. The weights ``weight``
    (num_classes * K, embedding_dim; row ``j K + k`` is sub-center k of class j) are a parameter
    of the loss (:class:`AdditiveMarginLoss`).
    """

    loss_name = "subcenter_arcface"

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5,
                 scale: float = 64.0, sub_centers: int = 3) -> None:
        check_angular_margin(margin)
        super().__init__(embedding_dim, num_classes, margin, scale, sub_centers)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return angular_margin_cosine(cosine, self.margin)
