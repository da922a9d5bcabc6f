"""Threshold-consistent margin loss, TCM (Zhang et al., "Threshold-Consistent Margin Loss for Open-World Deep
Metric Learning", ICLR 2024)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, pair_counts, reference_set
from ._precision import full_precision


def hinge_mean(gaps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean of the non-negative entries of ``gaps`` (weights: a bool mask or pair multiplicities); 0 when
    there are none, with a zero gradient."""
    active = weights * (gaps >= 0)
    return (gaps * active).sum() / active.sum().clamp(min=1)


class ThresholdConsistentMarginLoss(MetricLoss):
    """TCM: a regulariser that lifts positive pairs above ``margin_plus`` and pushes negatives below ``margin_minus``.

    With ``s`` the cosine of a pair, P the positive pairs with s <= m+ and N the negative pairs
    with s >= m- (Zhang et al. 2024, Eq. 4):

        L = λ+ / |P| sum_{P} (m+ - s)  +  λ- / |N| sum_{N} (s - m-)

    each part 0 when its set is empty. Only the pairs beyond a margin count, each part averaged
    over them: the hard pairs near the decision threshold, whose share differs from class to
    class, are pushed to the same side of it, so one threshold fits every class. It is meant to
    be added to a main loss (the paper pairs it with the cross-entropy, Proxy-Anchor, Smooth-AP …): in a recipe
    with ``weighted_sum``, as ``recipes/losses/threshold_consistent_margin.yaml`` adds it to multi-similarity.
    Defaults λ+ = λ- = 1, m+ 0.9, m- 0.5: pytorch-metric-learning's. Pairs are every pair of the
    batch (i != j), or a miner's ``indices_tuple`` (pairs, or triplets split into pairs, repeats
    counted); with a reference set (``ref_emb``, ``ref_labels``) the pairs are (batch row,
    reference row). Equal, value and gradient, to PML's ThresholdConsistentMarginLoss, which
    gathers the two embeddings of every pair (B² rows of D) where this masks one (B, R) cosine
    matrix; PML takes a reference set's labels but the partners' embeddings from the batch.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, lambda_plus: float = 1.0, lambda_minus: float = 1.0, margin_plus: float = 0.9,
                 margin_minus: float = 0.5) -> None:
        super().__init__()
        for name, value in (("lambda_plus", lambda_plus), ("lambda_minus", lambda_minus)):
            if value < 0:
                raise ValueError(f"threshold_consistent_margin: {name} must be >= 0 (default 1), got {value}")
        for name, value, default in (("margin_plus", margin_plus, 0.9), ("margin_minus", margin_minus, 0.5)):
            if not -1 <= value <= 1:
                raise ValueError(f"threshold_consistent_margin: {name} is a cosine in [-1, 1] (default {default}), "
                                 f"got {value}")
        self.lambda_plus, self.lambda_minus = lambda_plus, lambda_minus
        self.margin_plus, self.margin_minus = margin_plus, margin_minus

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("threshold_consistent_margin", embeddings, labels, ref_emb,
                                                      ref_labels)
        cos = cosine_similarities(embeddings, None if is_batch else ref_emb)
        if indices_tuple is None:
            positive, negative = label_masks(labels, ref_labels, is_batch)
        else:  # multiplicities: PML averages over its list of pairs, repeats included
            a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, labels)
            positive, negative = pair_counts(a1, p, cos), pair_counts(a2, n, cos)
        return (self.lambda_plus * hinge_mean(self.margin_plus - cos, positive)
                + self.lambda_minus * hinge_mean(cos - self.margin_minus, negative))
