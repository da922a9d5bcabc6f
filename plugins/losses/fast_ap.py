"""FastAP: average precision over soft distance histograms (Cakir, He, Xia, Kulis & Sclaroff, CVPR 2019)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import label_masks
from ._precision import full_precision


class FastAPLoss(MetricLoss):
    """FastAP: 1 - the mean, over anchors with a positive, of each anchor's average precision of the batch ranked
    by distance, computed from soft histograms of the distances (Cakir et al. 2019, "Deep Metric Learning to Rank").

    Distances are squared Euclidean of L2-normalised embeddings, ``d in [0, 4]``, quantised onto the
    ``num_bins + 1`` centres ``z_b = b * delta`` (``delta = 4 / num_bins``) by triangular kernels
    ``k_b(d) = max(0, 1 - |d - z_b| / delta)`` (each distance splits its unit mass between its two nearest
    centres). For anchor i, ``h+_b`` and ``h-_b`` are the summed kernels of its positives and negatives,
    ``H+_b`` and ``H_b`` the cumulative sums of ``h+`` and ``h+ + h-``, and (the paper's Eq. 9)
    ``FastAP_i = (1 / N+_i) sum_b h+_b H+_b / H_b`` (terms with ``h+_b H+_b = 0`` or ``H_b = 0`` are 0).
    ``L = 1 - mean_i FastAP_i`` over the anchors with a positive; 0 when none has one. A miner's
    ``indices_tuple`` only weights anchors, as pytorch-metric-learning does: each term ``1 - FastAP_i`` is
    scaled by how often row i occurs in the tuple over the most any row does. Equal to pytorch-metric-learning's
    FastAPLoss, building the histograms by scattering each distance onto its two bins instead of evaluating
    every kernel on every distance.
    """

    needs_global_batch = True  # histograms rank each anchor against the whole batch

    def __init__(self, num_bins: int = 10) -> None:
        super().__init__()
        if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 1:
            raise ValueError(f"fast_ap: num_bins must be an integer >= 1, got {num_bins!r} (default 10)")
        self.num_bins = int(num_bins)

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        bins = self.num_bins
        x = F.normalize(embeddings, dim=1)
        scaled = (2 - 2 * (x @ x.T)).clamp(min=0) * (bins / 4)  # d / delta, in [0, bins]
        positive, negative = label_masks(labels, labels, True)
        # each distance feeds only centres floor(t) and floor(t) + 1; the kernels there, PML's to rounding
        low_bin = scaled.detach().floor().clamp(max=bins - 1)
        low = F.relu(1 - (scaled - low_bin).abs())
        high = F.relu(1 - (scaled - low_bin - 1).abs())
        weight = (positive | negative).to(scaled.dtype)  # 0 on the diagonal
        offset = negative.long() * (bins + 1)  # positives fill columns [0, bins], negatives [bins + 1, 2 bins + 1]
        index = low_bin.long() + offset
        hist = scaled.new_zeros(len(labels), 2 * (bins + 1)).scatter_add_(
            1, torch.cat([index, index + 1], dim=1), torch.cat([low * weight, high * weight], dim=1))
        pos_hist, neg_hist = hist[:, :bins + 1], hist[:, bins + 1:]
        product = pos_hist * pos_hist.cumsum(1)
        total = (pos_hist + neg_hist).cumsum(1)
        safe = (product > 0) & (total > 0)
        terms = torch.where(safe, product / torch.where(safe, total, torch.ones_like(total)), torch.zeros_like(total))
        n_pos = positive.sum(1)
        has_pos = n_pos > 0
        ap = terms.sum(1) / n_pos.clamp(min=1)
        losses = (1 - ap) * lmu.convert_to_weights(indices_tuple, labels, dtype=ap.dtype) * has_pos
        loss = losses.sum() / has_pos.count_nonzero().clamp(min=1)
        return torch.where(safe.any(), loss, loss * 0)  # PML's zero when no bin is safe
