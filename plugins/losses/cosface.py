"""CosFace: large margin cosine loss (Wang et al., CVPR 2018)."""

from __future__ import annotations

import torch

from ._classifier import AdditiveMarginLoss


def check_cosine_margin(margin: float, loss: str) -> None:
    """Raise ValueError naming ``loss`` unless ``margin``, subtracted from a cosine, lies in [0, 1)."""
    if not 0 <= margin < 1:
        raise ValueError(f"{loss}: margin is subtracted from a cosine and must lie in [0, 1) (CosFace uses 0.35), "
                         f"got {margin}")


class CosFaceLoss(AdditiveMarginLoss):
    """CosFace large margin cosine loss: target logit s (cos(theta_y) - m) (Wang et al. 2018).

    With embeddings and class weights L2-normalised, the logits are ``s (cos(theta_y) - m)``
    for the target class and ``s cos(theta_j)`` for the others; the loss is the mean
    cross-entropy. Paper defaults: ``m = 0.35`` (a cosine, no unit), ``s = 64``. AM-Softmax
    (Wang F. et al. 2018), the same loss, used ``s = 30``. Equal, value and gradient, to
    pytorch-metric-learning's CosFaceLoss; see :class:`AdditiveMarginLoss` for the weights and
    a miner's ``indices_tuple``.
    """

    loss_name = "cosface"

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.35,
                 scale: float = 64.0) -> None:
        check_cosine_margin(margin, self.loss_name)
        super().__init__(embedding_dim, num_classes, margin, scale)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return cosine - self.margin
