"""Intra-pair variance loss (Yu & Tao, "Deep Metric Learning with Tuplet Margin Loss", ICCV 2019, its regulariser)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, pair_counts, reference_set
from ._precision import full_precision


def spread_term(cos: torch.Tensor, weights: torch.Tensor, eps: float, positive: bool) -> torch.Tensor:
    """Mean over the pairs (``weights``: each pair's multiplicity) of ``[(1-ε) E[cos] - cos]_+²`` (``positive``)
    or ``[cos - (1+ε) E[cos]]_+²``, with E[cos] their mean, not detached; 0 without pairs."""
    count = weights.sum().clamp(min=1)
    mean = (weights * cos).sum() / count
    gap = (1 - eps) * mean - cos if positive else cos - (1 + eps) * mean
    return (weights * F.relu(gap).square()).sum() / count


class IntraPairVarianceLoss(MetricLoss):
    """Intra-pair variance: same-writer and different-writer cosines each kept near their batch mean.

    With ``cos`` the cosine of two embeddings and E the mean over the pairs of its kind,

        L = mean_(a,p) [(1 - ε_pos) E[cos_ap] - cos_ap]_+²  +  mean_(a,n) [cos_an - (1 + ε_neg) E[cos_an]]_+²

    (Yu & Tao 2019, their intra-pair variance term, the sums averaged over their pairs as pytorch-metric-learning does):
    a positive pair much less similar than the positives' mean, or a negative much more similar
    than the negatives' mean, is penalised, which narrows each distribution; ε is the slack
    around the mean. The means are not detached (as in PML), so the gradient also flows through
    them. The paper adds it to the tuplet margin loss (``recipes/losses/intra_pair_variance.yaml``
    sums the two with ``weighted_sum``). Defaults ε_pos = ε_neg = 0.01: PML's. Pairs are every
    pair of the batch (i != j), or a miner's ``indices_tuple`` (pairs, or triplets split into
    pairs, repeats counted); with a reference set (``ref_emb``, ``ref_labels``) the pairs are
    (batch row, reference row). Equal to PML's IntraPairVarianceLoss (value and gradient), which
    masks one (B, R) cosine matrix here instead of gathering the pairs; except that PML returns 0
    when there is at most one pair of each kind (only with a tuple or a reference set), where
    such a pair keeps its term here (of a single pair, ``[-ε cos]_+²``).
    """

    needs_global_batch = True  # the means are over the batch's pairs
    accepts_reference = True

    def __init__(self, pos_eps: float = 0.01, neg_eps: float = 0.01) -> None:
        super().__init__()
        if not 0 <= pos_eps < 1:
            raise ValueError(f"intra_pair_variance: pos_eps must lie in [0, 1) (default 0.01), got {pos_eps}")
        if not neg_eps >= 0:
            raise ValueError(f"intra_pair_variance: neg_eps must be non-negative (default 0.01), got {neg_eps}")
        self.pos_eps, self.neg_eps = pos_eps, neg_eps

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("intra_pair_variance", embeddings, labels, ref_emb, ref_labels)
        cos = cosine_similarities(embeddings, None if is_batch else ref_emb)
        if indices_tuple is None:
            positive, negative = (m.to(cos.dtype) for m in label_masks(labels, ref_labels, is_batch))
        else:  # multiplicities: PML averages over its list of pairs, repeats included
            a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
            positive, negative = pair_counts(a1, p, cos), pair_counts(a2, n, cos)
        return (spread_term(cos, positive, self.pos_eps, True)
                + spread_term(cos, negative, self.neg_eps, False))
