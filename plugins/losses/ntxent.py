"""NT-Xent: SimCLR's normalised temperature-scaled cross-entropy (Chen et al., ICML 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._views import check_views


class NTXentLoss(ViewLoss):
    """NT-Xent (SimCLR, Chen et al. 2020): each view must pick its twin among the other 2B - 1 samples.

    With ``z`` the 2B L2-normalised embeddings of both views and ``s_ij = z_i . z_j / tau``,
    ``l(i, j) = -log( exp(s_ij) / sum_{k != i} exp(s_ik) )``, averaged over all 2B anchors
    (each view's twin is its positive, every other sample a negative).
    Default ``temperature`` tau = 0.1 (SimCLR's large-batch value; pytorch-metric-learning's
    ``NTXentLoss`` defaults to 0.07). Equals that loss with labels ``[0..B-1, 0..B-1]``.
    """

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"ntxent: temperature must be > 0, got {temperature}; try 0.1")
        self.temperature = temperature

    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("ntxent", z_a, z_b, min_batch=2)
        n = z_a.shape[0]
        z = F.normalize(torch.cat([z_a, z_b]), dim=1)
        logits = (z @ z.T) / self.temperature
        logits.fill_diagonal_(float("-inf"))
        twin = torch.arange(2 * n, device=z.device).roll(n)
        return F.cross_entropy(logits, twin)
