"""Histogram loss (Ustinova & Lempitsky, "Learning Deep Embeddings with Histogram Loss", NeurIPS 2016)."""

from __future__ import annotations

import math

import torch

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, pair_values
from ._precision import full_precision


class HistogramLoss(MetricLoss):
    """Histogram loss: the probability that a random negative pair is more similar than a random positive one.

    The cosines ``s`` of the positive and of the negative pairs are each spread over ``R + 1`` nodes
    ``t_r = -1 + r Δ`` (``Δ = 2 / R``) by linear interpolation: a pair with ``t_r <= s < t_{r+1}`` adds
    ``(t_{r+1} - s) / Δ`` to node r and ``(s - t_r) / Δ`` to node r + 1 (Ustinova & Lempitsky 2016, Eq. 2).
    Divided by the number of pairs these are the histograms ``h+`` and ``h-``, and (Eq. 4)
    ``L = sum_r h-_r Φ+_r`` with ``Φ+_r = sum_{q <= r} h+_q``, the cumulative positive histogram. Defaults
    ``n_bins = R = 100`` (``delta = Δ = 0.02``): pytorch-metric-learning's; give either, ``Δ`` dividing 2.
    The pairs are unordered and each counted once: every pair {i, j} of the batch (i != j) with an end that
    has both a positive and a negative in the batch, or, with a miner's ``indices_tuple``, the distinct
    {anchor, positive} and {anchor, negative} pairs of its triplets (pairs become triplets by their common
    anchors); 0 when there are none. Each cosine feeds only its two nodes, so the histograms cost one
    scatter over the pairs, not a (pairs x nodes) kernel. Equal to pytorch-metric-learning's HistogramLoss,
    which reaches the same pairs by listing every triplet of the batch; a cosine that rounds to 1 lands on
    the last node, where PML indexes past its histogram, and float64 input keeps float64 nodes, where PML's
    ``r * Δ`` are float32 (its float64 values are float32-accurate unless Δ is a power of 2).
    """

    needs_global_batch = True  # the histograms are over the pairs of the whole batch

    def __init__(self, n_bins: int | None = None, delta: float | None = None) -> None:
        super().__init__()
        if n_bins is not None and (isinstance(n_bins, bool) or int(n_bins) != n_bins or n_bins < 1):
            raise ValueError(f"histogram: n_bins must be an integer >= 1 (default 100), got {n_bins!r}")
        if delta is not None:
            bins = round(2 / delta) if delta > 0 else 0
            if isinstance(delta, bool) or bins < 1 or not math.isclose(bins * delta, 2, rel_tol=1e-9):
                raise ValueError(f"histogram: delta must be 2 / n_bins for an integer n_bins >= 1 (default 0.02), "
                                 f"got {delta!r}")
            if n_bins is not None and bins != n_bins:
                raise ValueError(f"histogram: delta must equal 2 / n_bins, got delta {delta!r} and n_bins {n_bins!r}")
            n_bins = bins
        self.n_bins = 100 if n_bins is None else int(n_bins)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        cos = cosine_similarities(embeddings)
        positive, negative = self._pairs(labels, indices_tuple)
        pos_rows, pos_cols = positive.nonzero(as_tuple=True)
        neg_rows, neg_cols = negative.nonzero(as_tuple=True)
        if len(pos_rows) == 0 or len(neg_rows) == 0:
            return cos.sum() * 0
        bins = self.n_bins
        values = pair_values(cos, torch.cat([pos_rows, neg_rows]), torch.cat([pos_cols, neg_cols]))
        position = (values + 1) * (bins / 2)  # (s + 1) / Δ: node r sits at r
        low = position.detach().floor().clamp(0, bins - 1)
        upper = position - low  # the share of node low + 1
        index = low.long()
        index[len(pos_rows):] += bins + 1  # positives fill nodes [0, R], negatives [R + 1, 2R + 1]
        weight = torch.cat([1 - upper, upper])
        nodes = values.new_zeros(2 * (bins + 1)).index_add_(0, torch.cat([index, index + 1]), weight)
        pos_hist, neg_hist = nodes[:bins + 1] / len(pos_rows), nodes[bins + 1:] / len(neg_rows)
        return (neg_hist * pos_hist.cumsum(0)).sum()

    @staticmethod
    def _pairs(labels: torch.Tensor, indices_tuple: tuple | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Upper-triangular (B, B) masks of the unordered positive and negative pairs, each pair once."""
        if indices_tuple is None:
            positive, negative = label_masks(labels, labels, True)
            anchor = positive.any(1) & negative.any(1)  # an end with a triplet
            keep = (anchor[:, None] | anchor[None, :]).triu(1)
            return positive & keep, negative & keep
        if len(indices_tuple) == 3:
            a1, p, n = indices_tuple
            a2 = a1
        else:  # a pair counts when its anchor also has a pair of the other kind: it is then in a triplet
            a1, p, a2, n = indices_tuple
            in_a1 = torch.zeros(len(labels), dtype=torch.bool, device=labels.device).index_fill_(0, a1, True)
            in_a2 = torch.zeros_like(in_a1).index_fill_(0, a2, True)
            a1, p = a1[in_a2[a1]], p[in_a2[a1]]
            a2, n = a2[in_a1[a2]], n[in_a1[a2]]
        masks = []
        for rows, cols in ((a1, p), (a2, n)):
            mask = torch.zeros(len(labels), len(labels), dtype=torch.bool, device=labels.device)
            masks.append(mask.index_put_((torch.minimum(rows, cols), torch.maximum(rows, cols)),
                                         torch.ones_like(rows, dtype=torch.bool)))
        return masks[0], masks[1]
