"""ArcFace: additive angular margin softmax (Deng et al., CVPR 2019)."""

from __future__ import annotations

import math

from pytorch_metric_learning import losses as pml_losses

from ._classifier import PMLClassifierLoss, check_scale, check_sizes


def check_angular_margin(margin: float) -> None:
    """Raise ValueError unless ``margin`` is an angle in radians in [0, pi/2)."""
    if not 0 <= margin < math.pi / 2:
        raise ValueError(f"margin is an angle in radians in [0, pi/2), got {margin}: ArcFace uses "
                         f"0.5 rad (28.65 degrees); give radians, not degrees")


class ArcFaceLoss(PMLClassifierLoss):
    """ArcFace additive angular margin softmax; margin in radians (Deng et al. 2019).

    With ``theta_j`` the angle between the embedding and class weight ``W_j`` (both
    L2-normalised), the target logit is ``s * cos(theta_y + m)`` and the others
    ``s * cos(theta_j)``; the loss is the mean cross-entropy. Where ``theta_y > pi - m`` the
    target logit is ``s * (cos(theta_y) - m * sin(m))``, which keeps it decreasing in theta
    (the official ``easy_margin=False`` rule). Paper defaults: ``m = 0.5`` rad, ``s = 64``.
    ``margin`` is in radians, the unit of the paper; pytorch-metric-learning's ArcFaceLoss,
    which this wraps, takes degrees, and the conversion is done here. The class weights
    ``W`` (embedding_dim, num_classes) are a parameter of the loss; a miner's
    ``indices_tuple`` weights each sample by how often it is mined (PML's rule).
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5,
                 scale: float = 64.0) -> None:
        check_sizes(embedding_dim, num_classes)
        check_angular_margin(margin)
        check_scale(scale)
        super().__init__(pml_losses.ArcFaceLoss(num_classes=num_classes, embedding_size=embedding_dim,
                                                margin=math.degrees(margin), scale=scale),
                         embedding_dim, num_classes)
