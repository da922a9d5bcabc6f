"""Triplet margin loss, hinge or soft margin (Weinberger et al. 2009; Hermans et al. 2017)."""

from __future__ import annotations

from pytorch_metric_learning import distances, losses as pml_losses, reducers

from hvkit.api import MetricLoss


class TripletLoss(MetricLoss):
    """Triplet loss l(margin + D_ap - D_an), hinge or soft margin (Hermans et al. 2017).

    ``D`` is the Euclidean distance, of L2-normalised embeddings unless
    ``normalize_embeddings`` is off (the unnormalised batch-hard setting of Hermans et al.).
    ``l`` is the hinge ``max(0, x)``, or ``softplus(x) = log(1 + e^x)`` with
    ``soft_margin``; Hermans et al.'s soft margin is ``soft_margin: true, margin: 0``.
    Triplets come from a miner's ``indices_tuple`` (e.g. batch-hard), or are all valid
    triplets of the batch. Reduction ``nonzero_mean`` averages over the triplets with a
    positive loss (Hermans et al.'s "BA!=0", pytorch-metric-learning's default); ``mean``
    averages over all of them (their batch-hard loss). Default margin 0.2. Wraps
    pytorch-metric-learning's TripletMarginLoss.
    """
