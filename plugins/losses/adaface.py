"""AdaFace: a margin that adapts to image quality through the embedding's norm (Kim, Jain & Liu, CVPR 2022)."""

from __future__ import annotations

import math

import torch

from ._classifier import AdditiveMarginLoss


class AdaFaceLoss(AdditiveMarginLoss):
    """AdaFace: the target's margin follows the embedding norm, a proxy of image quality (Kim et al. 2022).

    With ``||z||`` the norm of the (unnormalised) embedding, clipped to [0.001, 100] and without
    gradient, and ``mu``, ``sigma`` the running mean and standard deviation of those norms, the
    quality is ``q = clip(h (||z|| - mu) / (sigma + 1e-3), -1, 1)``; the target logit is

        s (cos(clip(theta_y - m q, eps, pi - eps)) - (m + m q)),

    the others ``s cos theta_j``, every cosine first clamped to [-1 + eps, 1 - eps], eps = 1e-3,
    and the loss is the mean cross-entropy. The lowest quality (q = -1) gives ArcFace's margin
    ``cos(theta_y + m)``, which weighs hard samples less; the mean quality (q = 0) CosFace's,
    ``cos theta_y - m``; the highest (q = 1) ``cos(theta_y - m) - 2m``, which weighs them more: hard
    images count when they are clear, not when they are unreadable. The statistics move as
    ``mu = t_alpha mean + (1 - t_alpha) mu`` (sample standard deviation alike) at every forward of
    two images or more in training mode, from ``mu`` 20 and ``sigma`` 100 (buffers, saved with the
    loss's state); in eval mode they stay. Defaults m 0.4, h 0.333, s 64, t_alpha 0.01 are the
    paper's and its code's. The embeddings must keep their norm (``reads_norms``: ``metric_train``
    does not normalise them for it); a head that L2-normalises gives every image the quality of the
    running mean. The norm statistics are the global batch's under several processes
    (``needs_global_batch``), so W processes train as one. See :class:`AdditiveMarginLoss` for the
    class weights and a miner's ``indices_tuple``.
    """

    loss_name = "adaface"
    needs_global_batch = True  # the norms' batch statistics
    reads_norms = True
    eps = 1e-3
    cosine_bound = 1 - eps

    def __init__(self, embedding_dim: int, num_classes: int, margin: float = 0.4, scale: float = 64.0,
                 h: float = 0.333, t_alpha: float = 0.01) -> None:
        if not 0 <= margin < math.pi / 2:
            raise ValueError(f"adaface: margin must lie in [0, pi/2) (the paper uses 0.4), got {margin}")
        if h <= 0:
            raise ValueError(f"adaface: h must be positive (the paper uses 0.333), got {h}")
        if not 0 < t_alpha <= 1:
            raise ValueError(f"adaface: t_alpha is the new batch's weight in the running statistics, in (0, 1] "
                             f"(the paper uses 0.01), got {t_alpha}")
        super().__init__(embedding_dim, num_classes, margin, scale)
        self.h, self.t_alpha = h, t_alpha
        self.register_buffer("norm_mean", torch.tensor(20.0))
        self.register_buffer("norm_std", torch.tensor(100.0))

    def quality(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The (B, 1) quality ``q`` of each embedding, after moving the running statistics (training mode)."""
        norms = embeddings.detach().norm(dim=1, keepdim=True).clamp(0.001, 100)
        if self.training and len(norms) > 1:
            self.norm_mean.lerp_(norms.mean(), self.t_alpha)
            self.norm_std.lerp_(norms.std(), self.t_alpha)
        return (self.h * (norms - self.norm_mean) / (self.norm_std + self.eps)).clamp(-1, 1)

    def target_cosine(self, cosine: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        q = self.quality(embeddings)
        theta = torch.acos(cosine) - self.margin * q
        return theta.clamp(self.eps, math.pi - self.eps).cos() - self.margin * (1 + q)
