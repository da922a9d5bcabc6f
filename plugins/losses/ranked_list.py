"""Ranked list loss (Wang, Hua, Kodirov, Hu, Garnier & Robertson, "Ranked List Loss for Deep Metric Learning",
CVPR 2019)."""

from __future__ import annotations

import math

import torch

from hvkit.api import MetricLoss

from ._pairs import euclidean_distances, label_masks
from ._precision import full_precision

WEIGHT_GUARD = 1e-5  # added per batch column to each weight sum, as PML does: an empty set's part is 0 / guard = 0


def weighted_violation(violation: torch.Tensor, temperature: float, member: torch.Tensor,
                       guard: float) -> torch.Tensor:
    """Row-wise ``sum_j w_j v_j / (sum_j w_j + guard)`` over the members j, ``w_j = exp(T v_j)``; 0 for an empty row.

    The members' violations ``v_j`` are positive and T >= 0, so ``w_j >= 1``: each row's weights are divided by
    its largest (the guard too), which leaves the value as it is and keeps a large ``T v`` from overflowing.
    """
    violation = violation.masked_fill(~member, 0)
    exponent = temperature * violation
    top = exponent.detach().amax(1, keepdim=True)  # >= 0; 0 for an empty row
    weights = torch.exp(exponent - top).masked_fill(~member, 0)
    return (weights * violation).sum(1) / (weights.sum(1) + guard * torch.exp(-top[:, 0]))


class RankedListLoss(MetricLoss):
    """Ranked list loss: per anchor, positives pulled within ``alpha - margin``, negatives pushed past ``alpha``.

    With ``d`` the Euclidean distance of L2-normalised embeddings, anchor i's violating positives
    ``P*_i = {j : y_j = y_i, j != i, d_ij > alpha - m}`` and negatives ``N*_i = {k : y_k != y_i, d_ik < alpha}``
    give (Wang et al. 2019, Eqs. 4-8)

        L_P(i) = sum_{P*_i} w_ij (d_ij - (alpha - m)) / sum_{P*_i} w_ij,    w_ij = exp(T_p (d_ij - (alpha - m)))
        L_N(i) = sum_{N*_i} w_ik (alpha - d_ik) / sum_{N*_i} w_ik,           w_ik = exp(T_n (alpha - d_ik))
        L      = mean_i [(1 - lambda) L_P(i) + lambda L_N(i)]

    over every anchor of the batch (an empty set's part is 0), with the weights differentiated as well.
    Each weight sum gets pytorch-metric-learning's guard, 1e-5 per batch column. Settings are PML's:
    ``margin`` m, ``Tn``, ``imbalance`` lambda, ``alpha``, ``Tp``; PML has no default for m and T_n. The
    defaults are the official code's (XinshaoAmosWang/Ranked-List-Loss-for-DML, RLL-Simpler): m = 0.4
    (``pn_margin``), alpha = 1 + m / 2 = 1.2 (``negative_threshold``; its loss layer places the two boundaries at
    1 -/+ m / 2), T_n = 10, T_p = 0 (positives weighted alike), and the positive and negative parts of each
    anchor weighted equally, lambda = 0.5 (its layer gives each half of an anchor's weight). Its per-dataset files
    change m and T_n (CUB: m 0.2, T_n 10; In-Shop: m 0.4, T_n 12). It also treats the weights as constants
    and weights each anchor by its share of all the batch's weights, where this (and PML) differentiates
    them and averages the anchors. Equal to PML's RankedListLoss in value and gradient, save that a pair at
    distance exactly 0 counts here (PML drops it: a collapsed batch got no negative term), and that the
    weights are rescaled per row, where PML's exp overflows (it warns above T = 5). A miner is refused, as
    in PML: the loss chooses its own pairs. O(B^2) memory.
    """

    needs_global_batch = True  # each anchor ranks the whole batch

    # defaults: the official code's caffe.proto (SolverParameter pn_margin 0.4, negative_threshold 1.2,
    # n_temperature 10, p_temperature 0) and its loss layer, which splits each anchor's weight 0.5 / 0.5
    def __init__(self, margin: float = 0.4, Tn: float = 10.0, imbalance: float = 0.5, alpha: float | None = None,
                 Tp: float = 0.0) -> None:
        super().__init__()
        if not margin >= 0:
            raise ValueError(f"ranked_list: margin must be >= 0 (default 0.4), got {margin}")
        if not 0 <= imbalance <= 1:
            raise ValueError(f"ranked_list: imbalance (lambda) must be in [0, 1] (default 0.5), got {imbalance}")
        alpha = 1 + margin / 2 if alpha is None else alpha
        if not alpha >= margin or not alpha > 0:
            raise ValueError(f"ranked_list: alpha must be positive and >= margin {margin} (default 1 + margin / 2), "
                             f"got {alpha}")
        for name, value in (("Tn", Tn), ("Tp", Tp)):
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"ranked_list: {name} (a weighting temperature) must be finite and >= 0, got {value}")
        self.margin, self.Tn, self.imbalance, self.alpha, self.Tp = margin, Tn, imbalance, alpha, Tp

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("ranked_list: the ranked list loss takes every violating pair of each anchor, not "
                             "mined pairs or triplets: remove the miner")
        distance = euclidean_distances(embeddings, True)
        positive, negative = label_masks(labels, labels, True)
        boundary = self.alpha - self.margin
        guard = WEIGHT_GUARD * len(labels)
        pulled = weighted_violation(distance - boundary, self.Tp, positive & (distance > boundary), guard)
        pushed = weighted_violation(self.alpha - distance, self.Tn, negative & (distance < self.alpha), guard)
        return ((1 - self.imbalance) * pulled + self.imbalance * pushed).mean()
