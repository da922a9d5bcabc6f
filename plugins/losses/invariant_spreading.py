"""Invariant and spreading instance feature loss (Ye, Zhang, Yuen & Chang, CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._views import check_views


class InvariantSpreadingLoss(ViewLoss):
    """Invariant and spreading instance features (Ye et al. 2019): softmax instance classifier over the batch.

    ``z_a`` holds the original instances' features ``f_i``, ``z_b`` their augmentations ``f^_i``
    (both L2-normalised here). Each original feature is the classifier weight of its instance:

    * ``P(i | x^_i) = exp(f_i . f^_i / tau) / sum_k exp(f_k . f^_i / tau)`` (invariance),
    * ``P(i | x_j) = exp(f_i . f_j / tau) / sum_k exp(f_k . f_j / tau)`` for ``j != i`` (spreading),
    * ``L = -(1/B) [ sum_i log P(i | x^_i) + sum_i sum_{j != i} log(1 - P(i | x_j)) ]``,

    the paper's negative log-likelihood averaged over the B instances, with gradients through
    every feature. Default ``temperature`` tau = 0.1, as in the paper. The authors' released
    code (``BatchAverage.py``) differs: it detaches the classifier-weight side, and each of the
    2B samples of both views is an anchor whose classes are the other 2B - 1 samples.
    For ``j != i``, ``P(i | x_j) <= 1/2`` (the ``k = j`` term dominates), so ``log(1 - P)`` is stable.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"invariant_spreading: temperature must be > 0, got {temperature}; try 0.1")
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("invariant_spreading", z_a, z_b)
        original = F.normalize(z_a, dim=1)
        augmented = F.normalize(z_b, dim=1)
        n = original.shape[0]
        # Row j of each matrix is the softmax over instances k for sample j.
        log_p_augmented = F.log_softmax(augmented @ original.T / self.temperature, dim=1)
        p_original = F.softmax(original @ original.T / self.temperature, dim=1)
        invariance = log_p_augmented.diagonal().sum()
        own_instance = torch.eye(n, dtype=torch.bool, device=original.device)
        spreading = torch.log1p(-p_original.masked_fill(own_instance, 0.0)).sum()
        return -(invariance + spreading) / n
