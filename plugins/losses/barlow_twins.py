"""Barlow Twins: redundancy reduction between two views (Zbontar et al., ICML 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def standardize(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per-feature batch standardisation: ``BatchNorm1d(affine=False)`` in training (biased variance)."""
    return F.batch_norm(z, None, None, training=True, eps=eps)


def cross_correlation_terms(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_i (1 - C_ii)^2, sum_{i != j} C_ij^2) for C = a^T b / B, a and b standardised (B, D).

    The off-diagonal sum is ||C||_F^2 - sum_i C_ii^2, and ||a^T b||_F^2 = <a a^T, b b^T> lets it
    come from two (B, B) Gram matrices when that is cheaper than the (D, D) matrix C.
    """
    n, d = a.shape
    if 2 * n < d:
        diagonal = (a * b).sum(dim=0) / n
        frobenius = ((a @ a.T) * (b @ b.T)).sum() / n ** 2
    else:
        c = a.T @ b / n
        diagonal = c.diagonal()
        frobenius = c.pow(2).sum()
    return (1 - diagonal).pow(2).sum(), frobenius - diagonal.pow(2).sum()


class BarlowTwinsLoss(ViewLoss):
    """Barlow Twins (Zbontar et al. 2021): push the views' cross-correlation matrix to the identity.

    ``L = sum_i (1 - C_ii)^2 + lambda * sum_{i != j} C_ij^2`` with ``C = std(Z_a)^T std(Z_b) / B``,
    ``std`` the per-feature batch standardisation of the official code (``BatchNorm1d`` without
    affine: biased variance, ``eps`` 1e-5). Default ``off_diagonal_weight`` (lambda) = 5e-3.
    No scaling of the whole loss (the official ``scale-loss`` factor belongs in the learning rate).
    Computed in float32 at least, with autocast off. After a call, ``terms()`` gives the detached
    ``on_diagonal`` and (unweighted) ``off_diagonal`` sums.
    """

    def __init__(self, off_diagonal_weight: float = 5e-3, eps: float = 1e-5) -> None:
        super().__init__()
        if off_diagonal_weight < 0:
            raise ValueError(f"barlow_twins: off_diagonal_weight must be >= 0, got {off_diagonal_weight}")
        if eps <= 0:
            raise ValueError(f"barlow_twins: eps must be > 0, got {eps}; the default is 1e-5")
        self.off_diagonal_weight = off_diagonal_weight
        self.eps = eps
        self._terms: dict[str, torch.Tensor] = {}

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("barlow_twins", z_a, z_b, min_batch=2)
        on_diagonal, off_diagonal = cross_correlation_terms(standardize(z_a, self.eps),
                                                            standardize(z_b, self.eps))
        self._terms = {"on_diagonal": on_diagonal.detach(), "off_diagonal": off_diagonal.detach()}
        return on_diagonal + self.off_diagonal_weight * off_diagonal

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached ``on_diagonal`` and unweighted ``off_diagonal`` sums."""
        return dict(self._terms)
