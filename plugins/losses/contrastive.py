"""Contrastive (siamese pair) loss (Hadsell, Chopra & LeCun, CVPR 2006), SigNet's objective."""

from __future__ import annotations

from typing import Literal

import torch

from hvkit.api import MetricLoss

from ._pairs import euclidean_distances, margin_terms, reduce_terms, reference_set


class ContrastiveLoss(MetricLoss):
    """Contrastive loss: same-writer pairs pulled within ``pos_margin``, different-writer pairs pushed past ``neg_margin``.

    With D the Euclidean distance (of L2-normalised embeddings unless ``normalize_embeddings``
    is off), ``L = reduce_(a,p) l(D_ap - m_pos) + reduce_(a,n) l(m_neg - D_an)``, with
    ``l(x) = max(0, x)``, or with ``squared`` Hadsell et al.'s ``l(x) = max(0, x)^2 / 2`` (their
    Eq. 4 at m_pos = 0; SigNet, Dey et al. 2017, trains a siamese network for signature
    verification with it). Pairs are every ordered pair of the batch (each unordered pair
    twice), or a miner's ``indices_tuple`` (pairs, or triplets split into pairs). Each sum is
    reduced on its own — ``nonzero_mean`` over the terms with a positive loss
    (pytorch-metric-learning's default), ``mean`` over all of them — and the two are added.
    Defaults m_pos = 0, m_neg = 1. With a reference set (``ref_emb``, ``ref_labels``) the pairs
    are (batch row, reference row), every one of them or the mined ones. Equal to
    pytorch-metric-learning's ContrastiveLoss with ``LpDistance`` in the hinge form (reference
    included), masking one distance matrix instead of gathering its pairs.
    """

    needs_global_batch = True  # pairs are a batch-level construction
    accepts_reference = True

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, squared: bool = False,
                 normalize_embeddings: bool = True,
                 reduction: Literal["nonzero_mean", "mean"] = "nonzero_mean") -> None:
        super().__init__()
        if pos_margin < 0 or neg_margin <= pos_margin:
            raise ValueError(f"contrastive: need 0 <= pos_margin < neg_margin, got pos_margin={pos_margin}, "
                             f"neg_margin={neg_margin} (defaults 0 and 1)")
        if reduction not in ("nonzero_mean", "mean"):
            raise ValueError(f"contrastive: reduction must be 'nonzero_mean' or 'mean', got {reduction!r}")
        self.pos_margin, self.neg_margin, self.squared = pos_margin, neg_margin, squared
        self.normalize_embeddings, self.reduction = normalize_embeddings, reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("contrastive", embeddings, labels, ref_emb, ref_labels)
        distance = euclidean_distances(embeddings, self.normalize_embeddings, ref_emb)
        pulled, pushed, counts = margin_terms(distance, labels, ref_labels, is_batch, indices_tuple,
                                              self.pos_margin, self.neg_margin)
        if self.squared:
            pulled, pushed = pulled.square() / 2, pushed.square() / 2
        return reduce_terms(pulled, counts[0], self.reduction) + reduce_terms(pushed, counts[1], self.reduction)
