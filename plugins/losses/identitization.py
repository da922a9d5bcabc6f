"""Identitization: cross-view correlation of cluster assignments pushed to the identity (Mei et al. 2024)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._views import check_views


class IdentitizationLoss(ViewLoss):
    """Cluster identitization (after Mei et al. 2024): two views' cluster-assignment correlation pushed to I.

    Inputs are the two views' cluster logits (B, K). With ``P = softmax(logits / tau)`` per view
    and ``p_a^k``, ``p_b^k`` the batch columns (B,) of cluster k,

    * ``C_kl = <p_a^k, p_b^l> / (||p_a^k|| ||p_b^l||)`` (K, K) — the cosine cross-correlation
      of the two views' assignment columns over the batch,
    * ``L = sum_k (1 - C_kk)^2 + w * sum_{k != l} C_kl^2`` (``w = off_diagonal_weight``).

    What is inferred rather than taken from the paper, which we could not consult: the
    normalisation of C and the weight w. C is normalised per column but *not centred*: for
    confident, view-consistent assignments that use every cluster, C is exactly the identity,
    whereas a centred (Pearson) C of K balanced one-hot clusters has off-diagonal entries
    -1/(K - 1) and never reaches it. Off-diagonal terms are weighted by w (default 1, i.e.
    ``||C - I||_F^2``), as Barlow Twins' lambda would. Defaults: tau = 1, w = 1; columns
    are normalised with a floor of ``eps`` = 1e-8 on their norm (an empty cluster gives C = 0).
    """

    def __init__(self, temperature: float = 1.0, off_diagonal_weight: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"identitization: temperature must be > 0, got {temperature}; try 1.0")
        if off_diagonal_weight < 0:
            raise ValueError(f"identitization: off_diagonal_weight must be >= 0, got {off_diagonal_weight}")
        if eps <= 0:
            raise ValueError(f"identitization: eps must be > 0, got {eps}; the default is 1e-8")
        self.temperature = temperature
        self.off_diagonal_weight = off_diagonal_weight
        self.eps = eps

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("identitization", z_a, z_b)
        if z_a.shape[1] < 2:
            raise ValueError("identitization: needs at least 2 clusters (K >= 2); give the cluster head "
                             "more outputs")
        columns_a = F.normalize(F.softmax(z_a / self.temperature, dim=1), dim=0, eps=self.eps)
        columns_b = F.normalize(F.softmax(z_b / self.temperature, dim=1), dim=0, eps=self.eps)
        identity = torch.eye(z_a.shape[1], dtype=columns_a.dtype, device=columns_a.device)
        weights = identity + self.off_diagonal_weight * (1 - identity)
        return (weights * (columns_a.T @ columns_b - identity).pow(2)).sum()
