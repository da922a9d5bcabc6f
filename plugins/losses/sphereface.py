"""SphereFace: angular softmax (A-Softmax) with the annealed lambda of the paper (Liu et al., CVPR 2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import annealed_lambda, check_batch, check_sizes, large_margin_logits
from ._precision import full_precision


class SphereFaceLoss(MetricLoss):
    """SphereFace A-Softmax with the annealed lambda schedule of the paper (Liu et al. 2017).

    Class weights are L2-normalised, embeddings are not: with ``theta_j`` the angle between
    embedding ``x`` and ``W_j``, the logits are ``|x| cos(theta_j)`` for non-target classes and

        |x| * (lambda * cos(theta_y) + psi(theta_y)) / (1 + lambda)

    for the target, where ``psi(theta) = (-1)^k cos(m theta) - 2k`` on
    ``theta in [k pi/m, (k+1) pi/m]`` (monotonic extension of ``cos(m theta)``); the loss is
    the mean cross-entropy. ``lambda`` anneals the margin in, as in the official Caffe layer:

        lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)

    where ``iteration`` counts forward calls in training mode (the first call uses 1; eval
    mode uses the current value without advancing). It is a buffer, so it is saved with the
    loss's state and a resumed run continues the schedule. Defaults are the paper's:
    ``m = 4``, base 1000, gamma 0.12, power 1, lambda_min 5. The class weights
    ``weight`` (num_classes, embedding_dim) are a parameter of the loss; a miner's
    ``indices_tuple`` weights each sample by how often it is mined (PML's rule). With
    ``base = lambda_min = 0`` this is pytorch-metric-learning's SphereFaceLoss, which lacks
    the annealing that the paper needs to train with m = 4. Computed in the weights' dtype,
    float32 at least, with autocast off (CUDA autocast would run ``acos`` in float32 beside
    bf16 cosines).
    """

    def __init__(self, embedding_dim: int, num_classes: int, margin: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__()
        check_sizes(embedding_dim, num_classes)
        if margin < 1:
            raise ValueError(f"margin is the integer angle multiplier m >= 1 (the paper uses 4), got {margin}")
        if base < 0 or lambda_min < 0 or gamma < 0:
            raise ValueError(f"base, gamma and lambda_min must be non-negative, got base={base}, "
                             f"gamma={gamma}, lambda_min={lambda_min}")
        self.embedding_dim, self.num_classes, self.margin = embedding_dim, num_classes, margin
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.weight = nn.Parameter(torch.randn(num_classes, embedding_dim))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def current_lambda(self) -> torch.Tensor:
        """The annealed lambda at the current iteration (a 0-d tensor in the weights' dtype, no host sync)."""
        return annealed_lambda(self.iteration, self.base, self.gamma, self.power, self.lambda_min,
                               self.weight.dtype)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes)
        if self.training:
            self.iteration += 1
        logits = large_margin_logits(embeddings.to(self.weight.dtype), self.weight, labels, self.margin,
                                     self.current_lambda(), normalize_weights=True)
        losses = F.cross_entropy(logits, labels, reduction="none")
        return (losses * lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)).mean()
