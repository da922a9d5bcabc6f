"""PNP loss (Li, Xie, Zhang, Xu, Lin & Ji, "Rethinking the Optimization of Average Precision: Only Penalizing
Negative Instances before Positive Ones is Enough", AAAI 2022)."""

from __future__ import annotations

import math
from typing import Iterator, Literal

import torch
from torch.autograd.function import once_differentiable

from hvkit.api import MetricLoss

from ._pairs import cosine_similarities, label_masks
from ._precision import full_precision

VARIANTS = ("O", "Ds", "Dq", "Iu", "Ib")
BLOCK_ENTRIES = 2 ** 22  # (pairs x batch) entries worked on at once, unless B^2 is more


def _blocks(pairs: int, partners: int) -> Iterator[slice]:
    """Slices of the pairs holding at most max(B^2, BLOCK_ENTRIES) (pair, partner) entries each: memory stays O(B^2)."""
    size = max(partners, BLOCK_ENTRIES // max(partners, 1))
    return (slice(start, start + size) for start in range(0, pairs, size))


class _NegativesBefore(torch.autograd.Function):
    """``R_p = sum_j neg[q_p, j] sigmoid((s[q_p, j] - s[q_p, i_p]) / tau)`` for pairs p = (q_p, i_p), block by block;
    the backward recomputes each block's sigmoids instead of keeping a (pairs, B) tensor."""

    @staticmethod
    def forward(ctx, sim: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, negative: torch.Tensor,
                anneal: float) -> torch.Tensor:
        ctx.save_for_backward(sim, rows, cols, negative)
        ctx.anneal = anneal
        counts = sim.new_empty(len(rows))
        for block in _blocks(len(rows), sim.shape[1]):
            q, i = rows[block], cols[block]
            above = torch.sigmoid((sim[q] - sim[q, i][:, None]) / anneal)
            counts[block] = above.masked_fill_(~negative[q], 0).sum(1)
        return counts

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        sim, rows, cols, negative = ctx.saved_tensors
        grad_sim = torch.zeros_like(sim)
        for block in _blocks(len(rows), sim.shape[1]):
            q, i = rows[block], cols[block]
            above = torch.sigmoid((sim[q] - sim[q, i][:, None]) / ctx.anneal)
            slope = (above * (1 - above)).masked_fill_(~negative[q], 0) * (grad[block] / ctx.anneal)[:, None]
            grad_sim.index_add_(0, q, slope)  # d R_p / d s[q, j]
            grad_sim.index_put_((q, i), -slope.sum(1), accumulate=True)  # d R_p / d s[q, i]
        return grad_sim, None, None, None, None


def negatives_before(sim: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, negative: torch.Tensor,
                     anneal: float) -> torch.Tensor:
    """(P,) soft counts of the negatives ranked before each pair's partner: for pair (q, i), ``sum_j
    sigmoid((s_qj - s_qi) / anneal)`` over the negatives j of q (``negative``, (B, B) bool), in O(B^2) memory."""
    return _NegativesBefore.apply(sim, rows, cols, negative, anneal)


class PNPLoss(MetricLoss):
    """PNP loss: penalise, for each query and positive, the negatives ranked before that positive.

    With ``s_i`` the cosine of the query with sample i, ``S_P`` the query's positives and ``S_N`` its
    negatives, ``R_i = sum_{j in S_N} sigmoid((s_j - s_i) / tau)`` (tau = ``anneal``) counts the negatives
    before positive i, and each query gives (Li et al. 2022, Eqs. 5, 7, 9, 12, 13)

        O:  mean_{S_P} R_i                                   Ds: mean_{S_P} log(1 + R_i)
        Iu: mean_{S_P} (1 + R_i) log(1 + R_i)                Dq: 1 - mean_{S_P} (1 + R_i)^(-alpha)
        Ib: mean_{S_P} (b R_i - log(1 + b R_i)) / b^2

    (I: the gradient in R grows, unbounded or bounded; D: it decreases, as the paper favours, so that a
    positive behind many negatives, perhaps of another mode of its class, is pulled less). L is the mean
    over the queries with a positive in the batch; 0 when none has one. Every sample is a query against the
    batch and, as in the authors' code and pytorch-metric-learning, counts in its own S_P (its R is the soft
    count of negatives closer than itself, nearly 0). Defaults are PML's: ``variant`` "O", ``b`` 2, ``alpha``
    1, ``anneal`` 0.01 (PML's sigmoid clamps its argument to ±50, a difference below 1e-21). Equal to PML's
    PNPLoss. PML builds (B, B, B) tensors; hvkit works out the (positive pairs x B) sigmoids block by block
    with its own backward (:func:`negatives_before`), O(B^2) memory. A miner is refused, as in PML.
    """

    needs_global_batch = True  # each query ranks the whole batch

    def __init__(self, b: float = 2.0, alpha: float = 1.0, anneal: float = 0.01,
                 variant: Literal["O", "Ds", "Dq", "Iu", "Ib"] = "O") -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"pnp: variant must be one of {', '.join(VARIANTS)} (default O), got {variant!r}")
        for name, value, default in (("b", b, 2), ("alpha", alpha, 1), ("anneal", anneal, 0.01)):
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"pnp: {name} must be positive and finite (default {default}), got {value}")
        self.b, self.alpha, self.anneal, self.variant = b, alpha, anneal, variant

    def _shape(self, before: torch.Tensor) -> torch.Tensor:
        if self.variant == "Ds":
            return torch.log1p(before)
        if self.variant == "Dq":
            return (1 + before) ** -self.alpha
        if self.variant == "Iu":
            return (1 + before) * torch.log1p(before)
        if self.variant == "Ib":
            return (self.b * before - torch.log1p(self.b * before)) / self.b ** 2
        return before

    @full_precision
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor,
                indices_tuple: tuple | None = None) -> torch.Tensor:
        if indices_tuple is not None:
            raise ValueError("pnp: the PNP loss ranks every sample of the batch for each query, not mined pairs "
                             "or triplets: remove the miner")
        sim = cosine_similarities(embeddings)
        positive, negative = label_masks(labels, labels, True)
        queried = positive.any(1)
        ranked = positive | torch.diag(queried)  # a query with a positive counts itself among them
        rows, cols = ranked.nonzero(as_tuple=True)
        terms = self._shape(negatives_before(sim, rows, cols, negative, self.anneal))
        per_query = sim.new_zeros(len(labels)).index_add_(0, rows, terms) / ranked.sum(1).clamp(min=1)
        loss = per_query.sum() / queried.count_nonzero().clamp(min=1)
        if self.variant == "Dq":
            loss = 1 - loss
        return torch.where(queried.any(), loss, sim.sum() * 0)
