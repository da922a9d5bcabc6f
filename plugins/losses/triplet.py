"""Triplet margin loss, hinge or soft margin (Weinberger et al. 2009; Hermans et al. 2017)."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import euclidean_distances, label_masks, pair_values, reduce_terms, reference_set, tuple_masks


class TripletLoss(MetricLoss):
    """Triplet loss l(margin + D_ap - D_an), hinge or soft margin (Hermans et al. 2017).

    ``D`` is the Euclidean distance, of L2-normalised embeddings unless
    ``normalize_embeddings`` is off (the unnormalised batch-hard setting of Hermans et al.).
    ``l`` is the hinge ``max(0, x)``, or ``softplus(x) = log(1 + e^x)`` with
    ``soft_margin``; Hermans et al.'s soft margin is ``soft_margin: true, margin: 0``.
    Triplets come from a miner's ``indices_tuple`` (e.g. batch-hard), or are all valid
    triplets of the batch; with a reference set (``ref_emb``, ``ref_labels``) the anchors are
    the batch's rows, the positives and negatives the reference's. Reduction ``nonzero_mean``
    averages over the triplets with a positive loss (Hermans et al.'s "BA!=0",
    pytorch-metric-learning's default); ``mean`` averages over all of them (their batch-hard
    loss). Default margin 0.2.

    Equal to pytorch-metric-learning's TripletMarginLoss (``smooth_loss`` for the soft
    margin, AvgNonZeroReducer or MeanReducer, reference set included) but faster on all
    triplets: each positive pair is scored against a whole row of distances instead of
    materialising the B^3-sized triplet index lists; a miner's pairs are split into triplets
    (each positive pair with each negative pair of its anchor) the same way, unless a pair
    is given twice.
    """

    needs_global_batch = True  # mining pairs or triplets is a batch-level operation
    accepts_reference = True

    def __init__(self, margin: float = 0.2, soft_margin: bool = False, normalize_embeddings: bool = True,
                 reduction: Literal["nonzero_mean", "mean"] = "nonzero_mean") -> None:
        super().__init__()
        if margin < 0:
            raise ValueError(f"margin must be non-negative (default 0.2), got {margin}")
        if reduction not in ("nonzero_mean", "mean"):
            raise ValueError(f"reduction must be 'nonzero_mean' or 'mean', got {reduction!r}")
        self.margin, self.soft_margin = margin, soft_margin
        self.normalize_embeddings, self.reduction = normalize_embeddings, reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("triplet", embeddings, labels, ref_emb, ref_labels)
        distance = euclidean_distances(embeddings, self.normalize_embeddings, ref_emb)
        masks = None
        if indices_tuple is None:
            masks = label_masks(labels, ref_labels, is_batch)
        elif len(indices_tuple) == 4:  # pairs: each (a, p) with each (a, n) of its anchor, as PML splits them
            masks = tuple_masks(indices_tuple, labels, distance.shape[1])
            if any(int(m.count_nonzero()) != len(i) for m, i in zip(masks, indices_tuple[::2])):
                masks = None  # a pair given twice gives its triplets twice: list them
        if masks is not None:
            anchor, positive = masks[0].nonzero(as_tuple=True)
            # Row (a, p) holds margin + D_ap - D_an for every n; non-negatives are masked out.
            violation = self.margin + pair_values(distance, anchor, positive)[:, None] - distance[anchor]
            valid = masks[1][anchor]
        else:
            anchor, positive, negative = lmu.convert_to_triplets(indices_tuple, labels)
            violation = self.margin + pair_values(distance, anchor, positive) - pair_values(distance, anchor, negative)
            valid = torch.ones_like(violation, dtype=torch.bool)
        losses = (F.softplus(violation) if self.soft_margin else F.relu(violation)) * valid
        return reduce_terms(losses, valid.count_nonzero(), self.reduction)
