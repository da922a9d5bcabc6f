"""Dynamic soft margin (Zhang & Rusinkiewicz, "Learning Local Descriptors with a CDF-Based Dynamic Soft Margin",
ICCV 2019)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import euclidean_distances, label_masks, pair_values, reference_set
from ._precision import full_precision


def leading_columns(mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's True columns, first to last, padded to the longest row: ``(columns (B, K), valid (B, K))``."""
    counts = mask.sum(dim=1)
    width = int(counts.max()) if mask.numel() else 0
    columns = torch.argsort((~mask).to(torch.uint8), dim=1, stable=True)[:, :width]
    return columns, torch.arange(width, device=mask.device) < counts[:, None]


class DynamicSoftMarginLoss(MetricLoss):
    """Dynamic soft margin: triplet terms d_ap - d_an weighted by their running CDF (Zhang & Rusinkiewicz 2019).

    With d the Euclidean distance of L2-normalised embeddings, each triplet (anchor a, positive
    p, negative n) gives ``v = d_ap - d_an`` in [-2, 2]. A histogram h of the v's, linearly
    interpolated onto ``num_bins`` nodes ``min_val + k Δ`` (Δ = 2 |min_val| / num_bins, k = 0 …
    num_bins - 1), is kept as a running average, ``h <- normalise((1 - μ) h + μ h_batch)`` (μ =
    ``momentum``; μ = 1 at the first call), and the loss is

        L = mean over triplets of CDF_h(v) v,   CDF_h(v) = sum_{k <= floor((v - min_val) / Δ)} h_k

    The CDF is a constant weight (no gradient flows through h): hard triplets (v high in the
    running distribution) weigh up to 1, easy ones near 0, a margin that adapts as training
    moves the distribution, with nothing to tune. Defaults min_val -2, 10 bins, μ 0.01:
    pytorch-metric-learning's. The triplets are every (a, p, n) of the batch, p != a, or a
    miner's ``indices_tuple`` (triplets, or pairs joined at their anchors, as PML); with a
    reference set (``ref_emb``, ``ref_labels``) p and n are reference rows. The histogram is a
    buffer (checkpoints hold it); a call without triplets returns 0 and leaves it alone. This
    is PML's DynamicSoftMarginLoss with labels, equal in value over consecutive calls and in
    gradient with its histogram detached: PML keeps the histogram's autograd graph, so its
    gradient also flows through the CDF and a second ``backward`` fails (the official code
    detaches it). A v outside the nodes' range is clamped onto the first or last node, where
    PML's indexing fails (v >= 2 - 2Δ at the defaults). The paper's patch-pair setting, a
    hardest negative per matching pair, is the triplets of a hardest-negative miner.
    """

    needs_global_batch = True  # triplets are a batch-level construction
    accepts_reference = True

    def __init__(self, min_val: float = -2.0, num_bins: int = 10, momentum: float = 0.01) -> None:
        super().__init__()
        if not min_val < 0:
            raise ValueError(f"dynamic_soft_margin: min_val must be negative, the nodes spanning [min_val, "
                             f"-min_val] (default -2), got {min_val}")
        if num_bins < 1:
            raise ValueError(f"dynamic_soft_margin: num_bins must be at least 1 (default 10), got {num_bins}")
        if not 0 < momentum <= 1:
            raise ValueError(f"dynamic_soft_margin: momentum must lie in (0, 1] (default 0.01), got {momentum}")
        self.min_val, self.num_bins, self.momentum = min_val, int(num_bins), momentum
        self.delta = 2 * abs(min_val) / num_bins
        self.register_buffer("histogram", torch.zeros(num_bins))

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, indices_tuple: tuple | None = None,
                ref_emb: torch.Tensor | None = None, ref_labels: torch.Tensor | None = None) -> torch.Tensor:
        ref_emb, ref_labels, is_batch = reference_set("dynamic_soft_margin", embeddings, labels, ref_emb,
                                                      ref_labels)
        dist = euclidean_distances(embeddings, True, None if is_batch else ref_emb)
        if indices_tuple is None:  # every triplet as a (B, P, N) block, padded rows masked
            positive, negative = label_masks(labels, ref_labels, is_batch)
            (pos, pos_valid), (neg, neg_valid) = leading_columns(positive), leading_columns(negative)
            values = dist.gather(1, pos)[:, :, None] - dist.gather(1, neg)[:, None, :]
            valid = (pos_valid[:, :, None] & neg_valid[:, None, :]).to(values.dtype)
        else:
            a, p, n = lmu.convert_to_triplets(indices_tuple, labels)
            values = pair_values(dist, a, p) - pair_values(dist, a, n)
            valid = torch.ones_like(values)
        cdf = self._update(values.detach(), valid).cumsum(0)
        weights = cdf[self._nodes(values.detach())[0]]
        return (weights * values * valid).sum() / valid.sum().clamp(min=1)

    def _nodes(self, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each value's node below (clamped into the range) and its fractional distance past it."""
        position = (values - self.min_val) / self.delta
        below = position.floor()
        return below.long().clamp(0, self.num_bins - 1), position - below

    @torch.no_grad()
    def _update(self, values: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Fold the valid values into the running histogram (in place; unchanged when there are none) and return
        it in the values' dtype."""
        node, frac = self._nodes(values)
        node, frac, valid = node.reshape(-1), frac.reshape(-1), valid.reshape(-1)
        old = self.histogram.to(values.dtype)
        batch = old.new_zeros(self.num_bins).index_add_(0, node, valid * (1 - frac))
        batch.index_add_(0, (node + 1).clamp(max=self.num_bins - 1), valid * frac)
        momentum = torch.where(old.sum() > 0, old.new_tensor(self.momentum), 1.0)  # 1 at the first call
        new = (1 - momentum) * old + momentum * batch
        new = torch.where(valid.sum() > 0, new / new.sum().clamp(min=torch.finfo(new.dtype).tiny), old)
        self.histogram.copy_(new)
        return new
