"""FaceNet semi-hard negative mining: negatives farther than the positive, but inside the margin."""

from typing import Literal

import torch
from pytorch_metric_learning.distances import LpDistance
from torch import nn

from hvkit_plugins.losses._pairs import label_masks

from ._distances import partners


class SemiHardMiner(nn.Module):
    """FaceNet semi-hard triplets: every positive pair with negatives d(a,p) < d(a,n) <= d(a,p) + margin.

    FaceNet (Schroff et al. 2015) keeps every anchor-positive pair and pairs it with
    *semi-hard* negatives, ``0 < d(a, n) - d(a, p) <= margin``. ``negatives="all"`` returns
    every such triplet (the triplets, in the order, of pytorch-metric-learning's
    TripletMarginMiner with type_of_triplets="semihard"); ``"hardest"`` returns per pair the
    one with the smallest d(a, n), as FaceNet's TensorFlow loss does (pairs without a
    semi-hard negative are left out). d is the Euclidean distance between L2-normalised
    embeddings (``normalize=False``: the raw embeddings), squared when ``squared`` (FaceNet's
    choice; the margin is then in squared units). Default margin 0.2, FaceNet's alpha.

    With a reference set (``ref_emb``, ``ref_labels``: ``accepts_reference``) the anchors are the batch's rows,
    positives and negatives the reference's, a positive p = a included: ``"all"`` gives PML's triplets with that
    reference, in its order.
    """

    accepts_reference = True

    def __init__(self, margin: float = 0.2, negatives: Literal["all", "hardest"] = "all",
                 normalize: bool = True, squared: bool = False) -> None:
        super().__init__()
        if margin <= 0:
            raise ValueError(f"margin must be positive, got {margin}")
        if negatives not in ("all", "hardest"):
            raise ValueError(f"negatives must be 'all' or 'hardest', got {negatives!r}")
        self.margin = margin
        self.negatives = negatives
        self.distance = LpDistance(normalize_embeddings=normalize, power=2 if squared else 1)

    @torch.no_grad()
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None = None,
                ref_labels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        reference, ref_labels, is_batch = partners("semi_hard", embeddings, labels, ref_emb, ref_labels)
        mat = self.distance(embeddings, reference)
        positive, negative = label_masks(labels.to(mat.device), ref_labels, is_batch)
        anchors, positives = torch.where(positive)
        gap = mat[anchors] - mat[anchors, positives].unsqueeze(1)
        semi_hard = negative[anchors] & (gap > 0) & (gap <= self.margin)
        if self.negatives == "all":
            pair, negatives = torch.where(semi_hard)
            return anchors[pair], positives[pair], negatives
        nearest = gap.masked_fill(~semi_hard, float("inf")).min(dim=1).indices
        keep = semi_hard.any(dim=1)
        return anchors[keep], positives[keep], nearest[keep]
