"""Triplet-margin mining: the triplets a triplet loss with that margin still sees, all, hard, semi-hard or easy."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import Distance, check_distance, pair_matrix, partners

TripletKind = Literal["all", "hard", "semihard", "easy"]


class TripletMarginMiner(nn.Module):
    """Triplets (a, p, n) chosen by their margin m = d(a, n) - d(a, p): all, hard, semi-hard or easy ones.

    Every anchor a, positive p (same label, p != a) and negative n (other label) is a
    candidate. ``all`` keeps ``m <= margin``, the triplets that violate the margin of the triplet
    loss ``max(0, d(a, p) - d(a, n) + margin)`` (Weinberger & Saul 2009); ``hard`` keeps
    ``m <= 0`` and ``semihard`` ``0 < m <= margin`` (Schroff et al. 2015, whose FaceNet named
    them), splitting ``all`` by whether the negative is nearer than the positive; ``easy`` keeps
    ``m > margin``, the others. d is the Euclidean distance between L2-normalised embeddings
    (``normalize=False``: the raw embeddings); with ``distance="cosine"`` the margin is
    ``m = S_ap - S_an`` of the cosine S. Defaults margin 0.2, ``all``: pytorch-metric-learning's.

    The triplets, and their order (by anchor, then positive, then negative), are those of PML's
    TripletMarginMiner with ``LpDistance(normalize_embeddings=normalize)`` or
    ``CosineSimilarity()``; they are found per positive pair against each row of the distance
    matrix, in (positive pairs x B) memory, O(B² k) for k per label, where PML enumerates a
    B x B x B cube of candidates.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows,
    positives and negatives the reference's, a positive p = a included: PML's triplets with that reference,
    in its order.
    """

    accepts_reference = True

    def __init__(self, margin: float = 0.2, type_of_triplets: TripletKind = "all", distance: Distance = "euclidean",
                 normalize: bool = True) -> None:
        super().__init__()
        check_distance("triplet_margin", distance, normalize)
        if type_of_triplets not in ("all", "hard", "semihard", "easy"):
            raise ValueError(f"triplet_margin: type_of_triplets must be 'all', 'hard', 'semihard' or 'easy', "
                             f"got {type_of_triplets!r}")
        if not margin >= 0:
            raise ValueError(f"triplet_margin: margin must be >= 0, got {margin}")
        self.margin, self.type_of_triplets = margin, type_of_triplets
        self.distance, self.normalize = distance, normalize

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("triplet_margin", embeddings, labels, ref_emb, ref_labels)
        mat = pair_matrix(embeddings, self.distance, self.normalize, reference)
        positive, negative = label_masks(labels.to(mat.device), ref_labels, is_batch)
        anchors, positives = torch.where(positive & negative.any(dim=1, keepdim=True))
        rows, ap = mat[anchors], mat[anchors, positives].unsqueeze(1)
        margin = ap - rows if self.distance == "cosine" else rows - ap
        if self.type_of_triplets == "easy":
            keep = margin > self.margin
        else:
            keep = margin <= self.margin
            if self.type_of_triplets == "hard":
                keep &= margin <= 0
            elif self.type_of_triplets == "semihard":
                keep &= margin > 0
        pair, negatives = torch.where(keep & negative[anchors])
        return anchors[pair], positives[pair], negatives
