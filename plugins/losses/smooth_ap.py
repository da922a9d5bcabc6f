"""Smooth-AP (Brown, Xie, Kalogeiton & Zisserman, "Smooth-AP: Smoothing the Path Towards Large-Scale Image
Retrieval", ECCV 2020)."""

from __future__ import annotations

import torch
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks, pair_values
from ._precision import full_precision


class SmoothAPLoss(MetricLoss):
    """Smooth-AP: 1 - the mean, over the queries with a positive, of each query's average precision of the batch
    ranked by cosine, with the ranking's step function replaced by a sigmoid of temperature τ.

    Each sample q of the batch is a query and the rest of the batch its retrieval set Ω, split into its positives
    P (same label) and negatives N. With ``G(x) = sigmoid(x / τ)`` and ``D_ij = s_qj - s_qi`` (``s`` the
    cosines with q), a positive i ranks ``R(i, S) = 1 + sum_{j in S, j != i} G(D_ij)`` among the set S, and
    (Brown et al. 2020, Eq. 7) ``AP_q = (1 / |P|) sum_{i in P} R(i, P) / R(i, Ω)``. ``L = 1 - mean_q AP_q``
    over the queries with a positive; 0 when none has one. Default τ = 0.01: the paper's and
    pytorch-metric-learning's. ``include_query=True`` ranks the query too, as a positive of itself
    (``P ∪ {q}``, ``Ω ∪ {q}``), as the authors' code and PML's SmoothAPLoss do. A miner's ``indices_tuple``
    only weights queries, as PML does: each ``1 - AP_q`` is scaled by how often q occurs in the tuple over the
    most any sample does. Work and memory are one (pairs, B) sigmoid matrix for the (query, positive) pairs,
    B²(K - 1) entries for K samples per writer; PML builds (B, B, B) ones. PML takes only batches of equal-sized
    classes and groups them by position, in consecutive runs as long as the batch has classes: it equals this
    loss with ``include_query=True`` on batches of C consecutive classes of C samples each; this loss takes any
    labelled batch.
    """

    needs_global_batch = True  # each query ranks the whole batch

    def __init__(self, temperature: float = 0.01, include_query: bool = False) -> None:
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"smooth_ap: temperature must be positive (default 0.01), got {temperature}")
        if not isinstance(include_query, bool):
            raise ValueError(f"smooth_ap: include_query must be true or false (default false), got {include_query!r}")
        self.temperature, self.include_query = temperature, include_query

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        cos = cosine_similarities(embeddings)
        positive, negative = label_masks(labels, labels, True)
        has_positive = positive.any(1)
        if self.include_query:
            positive = positive | torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        queries, items = (positive & has_positive[:, None]).nonzero(as_tuple=True)  # one row per (q, i)
        # G(s_qj - s_qi) for every j of the batch; each row's own item i and anything neither P nor N masked off
        above = torch.sigmoid(cos.index_select(0, queries).sub(pair_values(cos, queries, items)[:, None])
                              .div_(self.temperature))
        others = positive.index_select(0, queries).index_put_(
            (torch.arange(len(items), device=items.device), items), torch.zeros((), dtype=torch.bool,
                                                                                device=items.device))
        in_positives = 1 + torch.where(others, above, 0).sum(1)
        in_all = in_positives + torch.where(negative.index_select(0, queries), above, 0).sum(1)
        ap = cos.new_zeros(len(labels)).index_add_(0, queries, in_positives / in_all) / positive.sum(1).clamp(min=1)
        losses = (1 - ap) * lmu.convert_to_weights(indices_tuple, labels, dtype=ap.dtype) * has_positive
        return losses.sum() / has_positive.count_nonzero().clamp(min=1)
