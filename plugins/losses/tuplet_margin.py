"""Tuplet margin loss (Yu & Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, masked_logsumexp, pair_counts, reference_set
from ._precision import full_precision


class TupletMarginLoss(MetricLoss):
    """Tuplet margin loss: each positive pair against every negative of its anchor, with a slack margin.

    With ``cos θ`` the cosine of two embeddings, each positive pair (a, p) gives

        l_ap = log(1 + sum_n exp(s (cos θ_an - cos(θ_ap - β))))

    over the negatives n of anchor a (Yu & Tao 2019, Eq. 5: the (N+1)-tuplet loss on cosines with
    the slack margin β, in degrees, taken off the positive angle), and L is the mean of l_ap
    over the positive pairs (an anchor without negatives adds a 0). Defaults β = 5.73° (0.1 rad), s = 64:
    pytorch-metric-learning's. The paper's hard-sample-mining term (Eq. 7) is a miner's job here.
    Pairs are every pair of the batch (i != j), or a miner's ``indices_tuple`` (pairs, or
    triplets split into pairs, repeats counted); with a reference set (``ref_emb``,
    ``ref_labels``) the pairs are (batch row, reference row). As sum_n exp(s cos θ_an) depends
    on the anchor alone, one (B, R) cosine matrix and a masked log-sum-exp per row give every
    l_ap. Equal to PML's TupletMarginLoss, whose (positive pairs x negative pairs) matrix this
    avoids; cosines are clamped to [-1, 1] before arccos, where PML would return NaN.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, margin: float = 5.73, scale: float = 64.0) -> None:
        super().__init__()
        if not 0 <= margin < 90:
            raise ValueError(f"tuplet_margin: margin is in degrees, in [0, 90) (default 5.73), got {margin}")
        if not scale > 0:
            raise ValueError(f"tuplet_margin: scale must be positive (default 64), got {scale}")
        self.margin, self.scale = margin, scale

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("tuplet_margin", embeddings, labels, ref_emb, ref_labels)
        cos = cosine_similarities(embeddings, None if is_batch else ref_emb)
        logits = self.scale * cos
        if indices_tuple is None:
            positive, negative = label_masks(labels, ref_labels, is_batch)
            repeats = None
        else:  # multiplicities: PML sums over its list of pairs, repeats included
            a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
            repeats, negative = pair_counts(a1, p, cos), pair_counts(a2, n, cos)
            positive = repeats > 0
        # a row without negatives gives a huge negative sum, exp of it 0, and no NaN gradient
        pushed = masked_logsumexp(logits, negative)[0][:, None]
        angle = torch.acos(cos.masked_fill(~positive, 0).clamp(-1, 1))
        z = pushed - self.scale * torch.cos(angle - math.radians(self.margin))
        terms = F.softplus(z).masked_fill(~positive, 0)  # l_ap = log(1 + e^z)
        if repeats is None:
            return terms.sum() / positive.count_nonzero().clamp(min=1)
        return (terms * repeats).sum() / max(len(a1), 1)
