"""SphereFace: angular softmax (A-Softmax) with the annealed lambda of the paper (Liu et al., CVPR 2017)."""

from __future__ import annotations

from torch import nn

from .large_margin_softmax import LargeMarginSoftmaxLoss


class SphereFaceLoss(LargeMarginSoftmaxLoss):
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
    bf16 cosines). It is ``large_margin_softmax`` with unit class weights, s = 1 and these
    defaults (PML's SphereFaceLoss subclasses its LargeMarginSoftmaxLoss too).
    """

    loss_name = "sphereface"
    normalize_weights = True

    def __init__(self, embedding_dim: int, num_classes: int, margin: int = 4, base: float = 1000.0,
                 gamma: float = 0.12, power: float = 1.0, lambda_min: float = 5.0) -> None:
        super().__init__(embedding_dim, num_classes, margin, 1.0, base, gamma, power, lambda_min)
        nn.init.normal_(self.weight)  # PML's start; only the directions count
