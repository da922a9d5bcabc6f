"""L-Softmax: large-margin softmax with an integer angular margin (Liu, Wen, Yu & Yang, ICML 2016)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from hvkit.api import MetricLoss

from ._classifier import annealed_lambda, check_batch, check_scale, check_sizes, large_margin_logits
from ._precision import full_precision


class LargeMarginSoftmaxLoss(MetricLoss):
    """L-Softmax: the target logit ``|w_y| |x| psi(theta_y)`` demands m times the angle (Liu et al. 2016).

    Neither embeddings nor class weights are normalised: with ``theta_j`` the angle between
    embedding ``x`` and class weight ``w_j``, the logits are ``s |w_j| |x| cos(theta_j)`` for
    the other classes and, for the target y,

        s |w_y| |x| (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda),
        psi(theta) = (-1)^k cos(m theta) - 2k   on theta in [k pi/m, (k+1) pi/m]

    (Eq. 6 of the paper: ``cos(m theta)`` extended to stay decreasing on [0, pi]); the loss is
    the mean cross-entropy. m = ``margin`` (an integer), s = ``scale``. ``lambda`` is the
    official Caffe layer's annealing, which the paper uses to make the optimisation easier:

        lambda = max(lambda_min, base * (1 + gamma * iteration) ** -power)

    where ``iteration`` counts forward calls in training mode (a buffer, saved with the loss's
    state; eval mode does not advance it). ``base = 0`` (the default) removes it, as the
    official README says it may ("for MNIST the L-Softmax loss can work perfectly without
    lambda"); its MNIST example anneals with base 1000, gamma 2.5e-5, power 35, lambda_min 0,
    the defaults of those settings here. The defaults m = 4, s = 1, no lambda are
    pytorch-metric-learning's LargeMarginSoftmaxLoss, which this equals (value and gradient,
    a miner's ``indices_tuple`` weighting each sample by how often it is mined, PML's rule);
    SphereFace is the same logits with unit weights (``sphereface``). The class weights
    ``weight`` (num_classes, embedding_dim) are a parameter of the loss, started as in the
    official code (MSRA: normal with std sqrt(2 / embedding_dim)) and kept in their dtype
    (float32): the embeddings are cast to it, with autocast off.
    """

    loss_name = "large_margin_softmax"
    normalize_weights = False  # True: SphereFace's unit class weights

    def __init__(self, embedding_dim: int, num_classes: int, margin: int = 4, scale: float = 1.0,
                 base: float = 0.0, gamma: float = 2.5e-5, power: float = 35.0, lambda_min: float = 0.0) -> None:
        super().__init__()
        check_sizes(embedding_dim, num_classes, loss=self.loss_name)
        if isinstance(margin, bool) or not isinstance(margin, int) or margin < 1:
            raise ValueError(f"{self.loss_name}: margin is the integer angle multiplier m >= 1 "
                             f"(PML and the paper use up to 4), got {margin!r}")
        check_scale(scale, loss=self.loss_name)
        if base < 0 or gamma < 0 or lambda_min < 0:
            raise ValueError(f"{self.loss_name}: base, gamma and lambda_min must be non-negative, got "
                             f"base={base}, gamma={gamma}, lambda_min={lambda_min}")
        self.embedding_dim, self.num_classes, self.margin, self.scale = embedding_dim, num_classes, margin, scale
        self.base, self.gamma, self.power, self.lambda_min = base, gamma, power, lambda_min
        self.weight = nn.Parameter(nn.init.kaiming_normal_(torch.empty(num_classes, embedding_dim)))
        self.register_buffer("iteration", torch.zeros((), dtype=torch.int64))

    def current_lambda(self) -> torch.Tensor:
        """The annealed lambda at the current iteration (a 0-d tensor in the weights' dtype; 0 when base is 0)."""
        return annealed_lambda(self.iteration, self.base, self.gamma, self.power, self.lambda_min,
                               self.weight.dtype)

    def class_weights(self) -> torch.Tensor:
        """The class weights ``weight`` (C, D), for ``regularized``."""
        return self.weight

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        check_batch(embeddings, labels, self.embedding_dim, self.num_classes, loss=self.loss_name)
        if self.training:
            self.iteration += 1
        logits = large_margin_logits(embeddings.to(self.weight.dtype), self.weight, labels, self.margin,
                                     self.current_lambda(), normalize_weights=self.normalize_weights)
        losses = F.cross_entropy(logits if self.scale == 1 else self.scale * logits, labels, reduction="none")
        return (losses * lmu.convert_to_weights(indices_tuple, labels, dtype=losses.dtype)).mean()
