"""Pair-margin mining: the positive pairs still too far apart and the negative pairs still too close."""

from __future__ import annotations

import math

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import Distance, check_distance, pair_matrix, partners


class PairMarginMiner(nn.Module):
    """Positive pairs with d(a, p) > pos_margin and negative pairs with d(a, n) < neg_margin, as ``(a1, p, a2, n)``.

    With d the Euclidean distance between L2-normalised embeddings (``normalize=False``: the raw
    embeddings), keeps every ordered same-label pair (a, p), a != p, with ``d(a, p) > pos_margin``
    and every ordered different-label pair (a, n) with ``d(a, n) < neg_margin``: the pairs on
    which a contrastive loss with those margins is non-zero (Hadsell, Chopra & LeCun 2006). With
    ``distance="cosine"`` the tests turn round on the cosine S: ``S_ap < pos_margin`` and
    ``S_an > neg_margin``. Defaults 0.2 and 0.8, pytorch-metric-learning's. The pairs, and
    their order (row-major: by anchor, then partner), are those of PML's PairMarginMiner with
    ``LpDistance(normalize_embeddings=normalize)`` or ``CosineSimilarity()``, found by masking
    the distance matrix instead of gathering every pair first.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows
    and their partners the reference's, every (i, j) a candidate, i = j included: PML's pairs with that
    reference, in its order.
    """

    accepts_reference = True

    def __init__(self, pos_margin: float = 0.2, neg_margin: float = 0.8, distance: Distance = "euclidean",
                 normalize: bool = True) -> None:
        super().__init__()
        check_distance("pair_margin", distance, normalize)
        for setting, value in (("pos_margin", pos_margin), ("neg_margin", neg_margin)):
            if not math.isfinite(value) or (distance == "euclidean" and value < 0):
                raise ValueError(f"pair_margin: {setting} must be a finite distance >= 0 with distance "
                                 f"'euclidean', got {value}")
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.distance, self.normalize = distance, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("pair_margin", embeddings, labels, ref_emb, ref_labels)
        mat = pair_matrix(embeddings, self.distance, self.normalize, reference)
        positive, negative = label_masks(labels.to(mat.device), ref_labels, is_batch)
        if self.distance == "cosine":
            positive &= mat < self.pos_margin
            negative &= mat > self.neg_margin
        else:
            positive &= mat > self.pos_margin
            negative &= mat < self.neg_margin
        return *torch.where(positive), *torch.where(negative)
