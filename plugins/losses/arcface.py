"""ArcFace: additive angular margin softmax (Deng et al., CVPR 2019)."""

from __future__ import annotations

import math

import torch

from ._classifier import AdditiveMarginLoss, cos_plus


def check_angular_margin(margin: float) -> None:
    """Raise ValueError unless ``margin`` is an angle in radians in [0, pi/2)."""
    if not 0 <= margin < math.pi / 2:
        raise ValueError(f"margin is an angle in radians in [0, pi/2), got {margin}: ArcFace uses "
                         f"0.5 rad (28.65 degrees); give radians, not degrees")


def angular_margin_cosine(cosine: torch.Tensor, margin: float) -> torch.Tensor:
    """ArcFace's target cosine ``cos(theta + m)`` (:func:`cos_plus`), and ``cos(theta) - m sin(m)`` past
    ``theta = pi - m``: there, i.e. where ``cos(theta) < -cos(m)``, ``cos(theta + m)`` would rise again,
    and the official code's ``easy_margin=False`` rule keeps the logit decreasing in theta.
    """
    return torch.where(cosine >= -math.cos(margin), cos_plus(cosine, margin), cosine - margin * math.sin(margin))


class ArcFaceLoss(AdditiveMarginLoss):
    """ArcFace additive angular margin softmax; margin in radians (Deng et al. 2019).

    With ``theta_j`` the angle between the embedding and class weight ``w_j`` (both
    L2-normalised), the target logit is ``s cos(theta_y + m)`` and the others
    ``s cos(theta_j)``; the loss is the mean cross-entropy. Where ``theta_y > pi - m`` the
    target logit is ``s (cos(theta_y) - m sin(m))``, which keeps it decreasing in theta
    (the official ``easy_margin=False`` rule; :func:`angular_margin_cosine`). Paper defaults:
    ``m = 0.5`` rad, ``s = 64``. Equal, value and gradient, to pytorch-metric-learning's
    ArcFaceLoss, which takes the margin in degrees; see :class:`AdditiveMarginLoss` for the
    weights and a miner's ``indices_tuple``.
    """

    loss_name = "arcface"

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5,
                 scale: float = 64.0) -> None:
        check_angular_margin(margin)
        super().__init__(embedding_dim, num_classes, margin, scale)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return angular_margin_cosine(cosine, self.margin)
