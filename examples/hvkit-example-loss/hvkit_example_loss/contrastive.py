"""The contrastive loss of Hadsell, Chopra & LeCun (2006) over the pairs of a batch."""

from __future__ import annotations

import torch

from hvkit.api import MetricLoss


def pairs(labels: torch.Tensor, indices_tuple: tuple | None) -> tuple[torch.Tensor, ...]:
    """``(a1, p, a2, n)``: positive and negative pairs from a miner's tuple, or every pair of the batch."""
    if indices_tuple is None:
        same = labels.unsqueeze(0) == labels.unsqueeze(1)
        off_diagonal = ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        a1, p = torch.nonzero(same & off_diagonal, as_tuple=True)
        a2, n = torch.nonzero(~same, as_tuple=True)
        return a1, p, a2, n
    if len(indices_tuple) == 3:
        anchor, positive, negative = indices_tuple
        return anchor, positive, anchor, negative
    if len(indices_tuple) == 4:
        return tuple(indices_tuple)
    raise ValueError(f"indices_tuple must hold 3 (triplets) or 4 (pairs) tensors, got {len(indices_tuple)}")


class ContrastiveLoss(MetricLoss):
    """Contrastive loss (Hadsell et al. 2006): same-label pairs pulled to distance 0, others pushed past a margin.

    Over the positive pairs P (same label, i != j) and negative pairs N of a batch, with
    Euclidean distance d_ij between embeddings and margin m,

        L = 1 / (|P| + |N|) * [ sum_P 1/2 d_ij^2 + sum_N 1/2 max(0, m - d_ij)^2 ]

    (every ordered pair of the batch, or only the pairs a miner chose). A batch without
    pairs gives 0. Default margin 1.0, half the diameter of the unit sphere on which
    hvkit's stages put normalised embeddings. "Dimensionality Reduction by Learning an
    Invariant Mapping", CVPR 2006.
    """

    def __init__(self, margin: float = 1.0) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        self.margin = margin

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        a1, p, a2, n = pairs(labels.to(embeddings.device), indices_tuple)
        count = len(a1) + len(a2)
        if count == 0:
            return embeddings.sum() * 0
        positive = (embeddings[a1] - embeddings[p]).pow(2).sum(dim=1)
        # clamp before sqrt: a zero distance would give an infinite gradient
        distance = (embeddings[a2] - embeddings[n]).pow(2).sum(dim=1).clamp_min(1e-12).sqrt()
        negative = (self.margin - distance).clamp_min(0).pow(2)
        return 0.5 * (positive.sum() + negative.sum()) / count
