"""SwAV: swapped prediction of Sinkhorn-Knopp cluster codes (Caron et al., NeurIPS 2020).

Caron, Misra, Mairal, Goyal, Bojanowski & Joulin, "Unsupervised Learning of Visual Features
by Contrasting Cluster Assignments". Each view's embedding is L2-normalised, ``z / ||z||``,
and scored against K L2-normalised learnable prototypes c_k: ``s = z . c_k`` (B, K). The codes
Q of a global view are its scores' optimal-transport assignment, Sinkhorn-Knopp's
Algorithm 1 on ``exp(S / epsilon)`` (:func:`sinkhorn_knopp`, no gradient): every prototype
takes 1/K of the batch, every sample's code is a distribution over the prototypes. Each view
v then predicts the codes q_i of every global view i but itself,

    L = 1 / (G (V - 1)) sum_{i <= G} sum_{v != i} mean_b -sum_k q_i[b, k] log softmax(s_v[b] / tau)_k

over G = 2 global and V - 2 local (multi-crop) views (:func:`swapped_prediction`): with two
views ``(l(z_a, q_b) + l(z_b, q_a)) / 2``, the paper's Eq. 1 and its code's averaging.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from hvkit.api import ViewLoss

from .._ring_buffer import push_front
from ._precision import full_precision
from ._views import check_views


@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes (the paper's Algorithm 1): (..., N, K) scores → (..., N, K) codes, each row a distribution.

    ``Q = exp(S^T / epsilon)`` (K, N), then ``iterations`` times: each prototype's row scaled to
    sum to 1/K, then each sample's column to 1/N; returned as ``N Q^T``, so every code sums to
    1 and, at convergence, every prototype's column of the result to N/K (equal use). Leading
    dimensions are independent problems. No gradient; computed in the scores' dtype, at least
    float32. Each prototype's entries are first divided by their largest: a per-prototype
    factor, which the first row scaling removes (as it removes the paper's ``Q /= sum(Q)``), so
    ``exp`` cannot overflow; the smallest entry is then ``exp(-(max - min) / epsilon)``.
    """
    q = scores.detach().to(torch.promote_types(scores.dtype, torch.float32))
    q = (q - q.amax(dim=-2, keepdim=True)).div_(epsilon).exp_()
    n, k = q.shape[-2:]
    for _ in range(iterations):
        q /= q.sum(dim=-2, keepdim=True).mul_(k)
        q /= q.sum(dim=-1, keepdim=True).mul_(n)
    return q.mul_(n).to(scores.dtype)


def swapped_prediction(scores: torch.Tensor, codes: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean over (i, v != i) of mean_b -sum_k codes[i, b, k] log softmax(scores[v, b] / tau)_k``.

    ``scores`` (V, B, K) holds every view's scores, the G global views first; ``codes``
    (G, B, K) the global views' codes, taken as constants. Each log-softmax is computed once:
    ``sum_i sum_{v != i} <q_i, log p_v> = <sum_i q_i, sum_v log p_v> - sum_i <q_i, log p_i>``.
    """
    views, globals_, batch = scores.shape[0], codes.shape[0], scores.shape[1]
    log_p = F.log_softmax(scores / temperature, dim=2)
    codes = codes.detach()
    swapped = (codes.sum(dim=0) * log_p.sum(dim=0)).sum() - (codes * log_p[:globals_]).sum()
    return -swapped / (globals_ * (views - 1) * batch)


class SwAVLoss(ViewLoss):
    """SwAV (Caron et al. 2020): each view predicts the other global views' Sinkhorn codes over K prototypes.

    ``forward(z_a, z_b, *local_views)``: z_a, z_b the two global views, then any multi-crop
    local views, all (B, D); each local view predicts both global views' codes, which are
    computed from the global views only (``ssl_pretrain`` passes all views of a step in one
    call, :attr:`takes_local_views`). The ``num_prototypes`` prototypes (K, ``embedding_dim``,
    the head's output) are this loss's parameter: the queue below keeps embeddings, which are
    scored with the current prototypes at each step, as the paper's code does, so they belong
    with the loss (as the proxies of the proxy losses), not in the head. They are
    weight-normalised (used as ``c / ||c||``, starting on the unit sphere) rather than
    renormalised in place after each step as in the paper's code: the forward values are the
    same, the gradient loses the radial part the renormalisation would discard, and the loss
    stays a pure function of its inputs and parameters under any optimiser (the choice of
    DINO's weight-normalised last layer, and of ``dino_head`` here). The paper freezes the
    prototypes during the first epoch: ``train.frozen_epochs: {loss.prototypes: 1}``.

    Codes: :func:`sinkhorn_knopp` with ``epsilon`` 0.05 and ``sinkhorn_iterations`` 3, in
    float32 at least (float64 below epsilon 0.025), no gradient, over the whole batch
    (``needs_global_batch``: across processes the stage gathers the views, as the paper's
    distributed Sinkhorn sums over every process).
    ``temperature`` tau 0.1. Defaults are the paper's, K = 3000 its ImageNet size.

    Queue (the paper's for small batches: 3840 embeddings from epoch 15 at batch 256): with
    ``queue_size`` > 0 every training-mode call, from call ``queue_start_steps`` on, pushes
    the two global views' normalised embeddings (no gradient) into a queue of the last
    ``queue_size`` per global view; once it is full, each global view's codes come from
    ``sinkhorn_knopp([queue . C^T; S])``, of which the batch's last B rows are kept. Queue, its
    fill count and the call count are buffers, so a checkpoint resumes them; call the loss
    once per training step. Computed in float32 at least, with autocast off.
    """

    needs_global_batch: ClassVar[bool] = True
    takes_local_views: ClassVar[bool] = True

    def __init__(self, embedding_dim: int, num_prototypes: int = 3000, temperature: float = 0.1,
                 epsilon: float = 0.05, sinkhorn_iterations: int = 3, queue_size: int = 0,
                 queue_start_steps: int = 0) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"swav: embedding_dim must be at least 1, got {embedding_dim}")
        if num_prototypes < 2:
            raise ValueError(f"swav: num_prototypes must be at least 2, got {num_prototypes}; the paper uses 3000")
        for name, value, paper in (("temperature", temperature, 0.1), ("epsilon", epsilon, 0.05)):
            if value <= 0:
                raise ValueError(f"swav: {name} must be > 0, got {value}; the paper uses {paper}")
        if sinkhorn_iterations < 1:
            raise ValueError(f"swav: sinkhorn_iterations must be at least 1, got {sinkhorn_iterations}; "
                             "the paper uses 3")
        if queue_size < 0 or queue_start_steps < 0:
            raise ValueError(f"swav: queue_size={queue_size} and queue_start_steps={queue_start_steps} must be "
                             ">= 0; queue_size 0 turns the queue off")
        self.embedding_dim, self.num_prototypes = embedding_dim, num_prototypes
        self.temperature, self.epsilon, self.sinkhorn_iterations = temperature, epsilon, sinkhorn_iterations
        self.queue_size, self.queue_start_steps = queue_size, queue_start_steps
        self.prototypes = nn.Parameter(F.normalize(torch.randn(num_prototypes, embedding_dim), dim=1))
        self.register_buffer("queue", torch.zeros(2, queue_size, embedding_dim))
        self.register_buffer("queued", torch.zeros((), dtype=torch.int64))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *local_views: torch.Tensor) -> torch.Tensor:
        check_views("swav", z_a, z_b, local_views=local_views)
        if z_a.shape[1] != self.embedding_dim:
            raise ValueError(f"swav: views have {z_a.shape[1]} features but the prototypes {self.embedding_dim}; "
                             "set embedding_dim to the head's out_dim")
        batch = z_a.shape[0]
        views = F.normalize(torch.cat([z_a, z_b, *local_views]).to(self.prototypes.dtype), dim=1)
        prototypes = F.normalize(self.prototypes, dim=1)
        scores = (views @ prototypes.T).view(-1, batch, self.num_prototypes)
        codes = self.codes(scores[:2], prototypes)
        if self.training:
            self._push(views[:2 * batch].detach().view(2, batch, -1))
        return swapped_prediction(scores, codes, self.temperature)

    @torch.no_grad()
    def codes(self, scores: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """The global views' (2, B, K) codes: Sinkhorn-Knopp over their scores, below the queue's once it is full.

        In float64 when ``epsilon`` < 0.025: cosines span 2, and float32 holds ``exp(-2 / epsilon)`` only above that.
        """
        batch = scores.shape[1]
        if self.queue_size and int(self.queued) == self.queue_size:
            scores = torch.cat([self.queue @ prototypes.T, scores], dim=1)
        if self.epsilon < 0.025:
            scores = scores.double()
        return sinkhorn_knopp(scores, self.epsilon, self.sinkhorn_iterations)[:, -batch:].to(prototypes.dtype)

    @torch.no_grad()
    def _push(self, global_views: torch.Tensor) -> None:
        """From call ``queue_start_steps`` on, the (2, B, D) global embeddings enter the queue, newest first."""
        if self.queue_size and int(self.steps) >= self.queue_start_steps:
            push_front(self.queue.transpose(0, 1), global_views.transpose(0, 1))
            self.queued.copy_((self.queued + global_views.shape[1]).clamp(max=self.queue_size))
        self.steps += 1
