"""CosFace: large margin cosine loss (Wang et al., CVPR 2018)."""

from __future__ import annotations

from pytorch_metric_learning import losses as pml_losses

from ._classifier import PMLClassifierLoss, check_scale, check_sizes


class CosFaceLoss(PMLClassifierLoss):
    """CosFace large margin cosine loss: target logit s*(cos(theta_y) - m) (Wang et al. 2018).

    With embeddings and class weights L2-normalised, the logits are ``s * (cos(theta_y) - m)``
    for the target class and ``s * cos(theta_j)`` for the others; the loss is the mean
    cross-entropy. Paper defaults: ``m = 0.35`` (a cosine, no unit), ``s = 64``. AM-Softmax
    (Wang F. et al. 2018), the same loss, used ``s = 30``. Wraps pytorch-metric-learning's
    CosFaceLoss; the weights ``W`` (embedding_dim, num_classes) are a parameter of the loss.
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.35,
                 scale: float = 64.0) -> None:
        check_sizes(embedding_dim, num_classes)
        if not 0 <= margin < 1:
            raise ValueError(f"margin is subtracted from a cosine and must lie in [0, 1) "
                             f"(CosFace uses 0.35), got {margin}")
        check_scale(scale)
        super().__init__(pml_losses.CosFaceLoss(num_classes=num_classes, embedding_size=embedding_dim,
                                                margin=margin, scale=scale),
                         embedding_dim, num_classes)
