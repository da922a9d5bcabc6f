"""CurricularFace: hard negatives weighted more as training advances (Huang et al., CVPR 2020)."""

from __future__ import annotations

import torch

from ._classifier import AdditiveMarginLoss, cos_plus
from .arcface import angular_margin_cosine, check_angular_margin


class CurricularFaceLoss(AdditiveMarginLoss):
    """CurricularFace: ArcFace's target, and each hard negative's cosine modulated by the training stage (Huang
    et al. 2020).

    The target logit is ArcFace's, ``s cos(theta_y + m)`` (``s (cos theta_y - m sin m)`` past ``pi - m``).
    A negative class j with ``cos theta_j > cos(theta_y + m)`` (one the margin leaves misclassified) has the
    logit ``s cos theta_j (t + cos theta_j)``, an easy one ``s cos theta_j``; the loss is the mean
    cross-entropy. ``t``, the curriculum, is a running mean of the target cosines,
    ``t = 0.01 mean(cos theta_y) + 0.99 t`` from 0 at every forward in training mode, before it is used
    (a buffer, saved with the loss's state; eval mode leaves it). Early on t is near 0 and hard negatives
    weigh less than in ArcFace (easy samples first); as the targets align t grows and they weigh more. Defaults
    m 0.5, s 64 are the paper's. ``t`` is the global batch's under several processes (``needs_global_batch``).
    See :class:`AdditiveMarginLoss` for the weights and a miner's ``indices_tuple``.
    """

    loss_name = "curricularface"
    needs_global_batch = True  # t is the batch's mean target cosine

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.5, scale: float = 64.0) -> None:
        check_angular_margin(margin)
        super().__init__(embedding_dim, num_classes, margin, scale)
        self.register_buffer("t", torch.tensor(0.0))

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return angular_margin_cosine(cosine, self.margin)

    def logits(self, cosine: torch.Tensor, targets: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        target = cosine.gather(1, targets)
        if self.training:
            self.t.lerp_(target.detach().mean(), 0.01)
        shifted = cos_plus(target, self.margin)  # no fallback past pi - m here, as in the paper's code
        modulated = torch.where(cosine > shifted, cosine * (self.t + cosine), cosine)
        return (self.scale * modulated).scatter(1, targets, self.scale * self.target_cosine(target, embeddings))
