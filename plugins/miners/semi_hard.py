"""FaceNet semi-hard negative mining: negatives farther than the positive, but inside the margin."""

from typing import Literal

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn


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
    """

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
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mat = self.distance(embeddings)
        matches, diffs = lmu.get_matches_and_diffs(labels.to(mat.device))
        anchors, positives = torch.where(matches.bool())
        gap = mat[anchors] - mat[anchors, positives].unsqueeze(1)
        semi_hard = diffs.bool()[anchors] & (gap > 0) & (gap <= self.margin)
        if self.negatives == "all":
            pair, negatives = torch.where(semi_hard)
            return anchors[pair], positives[pair], negatives
        nearest = gap.masked_fill(~semi_hard, float("inf")).min(dim=1).indices
        keep = semi_hard.any(dim=1)
        return anchors[keep], positives[keep], nearest[keep]
