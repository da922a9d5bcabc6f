"""VICReg: variance-invariance-covariance regularisation (Bardes, Ponce & LeCun, ICLR 2022)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def invariance_term(z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
    """s(Z, Z') = mean over batch and features of (z - z')^2."""
    return F.mse_loss(z_a, z_b)


def variance_term(z: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4) -> torch.Tensor:
    """v(Z) = mean_j relu(gamma - sqrt(Var(z_j) + eps)), with the unbiased variance over the batch."""
    std = torch.sqrt(z.var(dim=0) + eps)
    return F.relu(gamma - std).mean()


class _OffDiagonalSquares(torch.autograd.Function):
    """sum_{i != j} (Z^T Z)_ij^2 for a (B, D) matrix Z, with a one-matmul backward.

    ||Z^T Z||_F = ||Z Z^T||_F, so the forward uses the smaller Gram matrix G, and the
    gradient 4 (Z Z^T Z - Z diag(Z^T Z)) reuses G: one matmul where autograd would take two.
    """

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        n, d = z.shape
        gram = z @ z.T if n < d else z.T @ z
        column_squares = z.pow(2).sum(dim=0)
        ctx.save_for_backward(z, gram, column_squares)
        return gram.pow(2).sum() - column_squares.pow(2).sum()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        z, gram, column_squares = ctx.saved_tensors
        n, d = z.shape
        gram_z = gram @ z if n < d else z @ gram
        return (4 * grad) * (gram_z - z * column_squares)


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """c(Z) = sum_{i != j} C(Z)_ij^2 / D, C the unbiased (D, D) covariance over the batch.

    Computed as ||C||_F^2 - sum_j C_jj^2 without building or masking C itself.
    """
    n, d = z.shape
    return _OffDiagonalSquares.apply(z - z.mean(dim=0)) / ((n - 1) ** 2 * d)


class VICRegLoss(ViewLoss):
    """VICReg (Bardes et al. 2022): invariance + variance + covariance terms over two views.

    ``L = lambda * s(Z_a, Z_b) + mu * (v(Z_a) + v(Z_b)) / 2 + nu * (c(Z_a) + c(Z_b))`` with
    lambda = ``invariance_weight``, mu = ``variance_weight``, nu = ``covariance_weight`` and

    * ``s`` the mean squared difference of the two views (over batch and features),
    * ``v(Z) = mean_j relu(gamma - sqrt(Var(z_j) + eps))`` (unbiased variance),
    * ``c(Z) = sum_{i != j} Cov(Z)_ij^2 / D`` (unbiased covariance).

    Convention: the variance terms are *averaged* over the two views, as in the official code,
    pytorch-metric-learning's ``VICRegLoss`` and lightly (the paper's equation sums them);
    ``average_variance=False`` gives the paper's sum. Defaults are the paper's:
    lambda=25, mu=25, nu=1, eps=1e-4, gamma=1. With the defaults the value and gradient equal
    pytorch-metric-learning's, but the covariance never builds a masked (D, D) copy.
    Computed in float32 at least, with autocast off. After a call, ``terms()`` gives the detached
    unweighted ``invariance`` s, ``variance`` v (as the loss adds it) and ``covariance`` c (both
    views'), so that ``L = lambda s + mu v + nu c``: a variance term near 0 means no output collapsed.
    """

    def __init__(self, invariance_weight: float = 25.0, variance_weight: float = 25.0,
                 covariance_weight: float = 1.0, eps: float = 1e-4, gamma: float = 1.0,
                 average_variance: bool = True) -> None:
        super().__init__()
        for name, value in (("invariance_weight", invariance_weight),
                            ("variance_weight", variance_weight),
                            ("covariance_weight", covariance_weight)):
            if value < 0:
                raise ValueError(f"vicreg: {name} must be >= 0, got {value}; use a non-negative weight")
        if eps <= 0:
            raise ValueError(f"vicreg: eps must be > 0, got {eps}; the default is 1e-4")
        if gamma <= 0:
            raise ValueError(f"vicreg: gamma must be > 0, got {gamma}; it is the target standard deviation")
        self.invariance_weight = invariance_weight
        self.variance_weight = variance_weight
        self.covariance_weight = covariance_weight
        self.eps = eps
        self.gamma = gamma
        self.average_variance = average_variance
        self._terms: dict[str, torch.Tensor] = {}

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("vicreg", z_a, z_b, min_batch=2)
        variance = variance_term(z_a, self.gamma, self.eps) + variance_term(z_b, self.gamma, self.eps)
        if self.average_variance:
            variance = variance / 2
        invariance, covariance = invariance_term(z_a, z_b), covariance_term(z_a) + covariance_term(z_b)
        self._terms = {"invariance": invariance.detach(), "variance": variance.detach(),
                       "covariance": covariance.detach()}
        return (self.invariance_weight * invariance + self.variance_weight * variance
                + self.covariance_weight * covariance)

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached, unweighted ``invariance``, ``variance`` and ``covariance`` parts."""
        return dict(self._terms)
