"""Hard-aware pair mining (Yuan, Yang & Zhang, "Hard-Aware Deeply Cascaded Embedding", ICCV 2017)."""

from __future__ import annotations

import math

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import Distance, check_distance, pair_matrix, partners


class HDCMiner(nn.Module):
    """The hardest ``filter_percentage`` of the positive pairs and of the negative pairs, as ``(a1, p, a2, n)``.

    HDC (Yuan et al. 2017) trains a cascade of embeddings, each later one on the pairs the
    earlier ones find hard: the positive pairs farthest apart and the negative pairs closest.
    This is that selection for one model, as in pytorch-metric-learning's HDCMiner: of the P
    ordered same-label pairs (a, p), a != p, the ``ceil(filter_percentage * P)`` with the largest
    d(a, p), and of the N different-label pairs the ``ceil(filter_percentage * N)`` with the
    smallest d(a, n). d is the Euclidean distance between L2-normalised embeddings
    (``normalize=False``: the raw embeddings); with ``distance="cosine"`` the hardest are the
    lowest-cosine positives and highest-cosine negatives. Default 0.5, PML's.

    The pairs and their order (hardest first, as ``torch.topk`` ranks them) are those of PML's
    HDCMiner with ``LpDistance(normalize_embeddings=normalize)`` or ``CosineSimilarity()``: the
    same distances ranked in the same (row-major) order, so that even ties, such as d(a, p) and
    d(p, a), fall alike. PML's cascade hook (``set_idx_externally``, ranking another miner's
    pairs) has no counterpart: hvkit's miners take embeddings, labels and a reference set only.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the pairs are (batch row, reference
    row), every one a candidate, i = j included: PML's pairs with that reference, in its order.
    """

    accepts_reference = True

    def __init__(self, filter_percentage: float = 0.5, distance: Distance = "euclidean",
                 normalize: bool = True) -> None:
        super().__init__()
        check_distance("hdc", distance, normalize)
        if not 0 < filter_percentage <= 1:
            raise ValueError(f"hdc: filter_percentage must be in (0, 1], got {filter_percentage}")
        self.filter_percentage = filter_percentage
        self.distance, self.normalize = distance, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("hdc", embeddings, labels, ref_emb, ref_labels)
        mat = pair_matrix(embeddings, self.distance, self.normalize, reference)
        mined = []
        for mask, farthest in zip(label_masks(labels.to(mat.device), ref_labels, is_batch), (True, False)):
            rows, cols = torch.where(mask)
            k = math.ceil(self.filter_percentage * len(rows))
            hardest = mat[rows, cols].topk(k, largest=farthest != (self.distance == "cosine")).indices
            mined += [rows[hardest], cols[hardest]]
        return tuple(mined)
