"""MoCo v2: a query picks its momentum teacher's key among a queue of past keys (He et al., CVPR 2020).

He, Fan, Wu, Xie & Girshick, "Momentum Contrast for Unsupervised Visual Representation
Learning" (CVPR 2020), with the improvements of Chen, Fan, Girshick & He, "Improved Baselines
with Momentum Contrastive Learning" (2020): an MLP head, temperature 0.2, stronger
augmentation and a cosine learning-rate schedule (the last three are the recipe's). With the
query ``q_i = online_i / ||online_i||`` of one view, its key ``k_i = stopgrad(target_i) /
||target_i||`` from the momentum encoder on another view of the same image, and the queue's
K unit keys ``n_1 … n_K`` of earlier steps, the paper's Eq. 1 (Algorithm 1) is

    L = mean_i -log( exp(q_i . k_i / tau) / (exp(q_i . k_i / tau) + sum_j exp(q_i . n_j / tau)) )

— InfoNCE over [k+; queue] with one positive, K + 1 logits per query; the batch's other keys
are no negatives. The queue is a first-in first-out buffer: after the loss, each training step
enqueues its keys in place of the oldest, so a step never sees its own keys as negatives.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F

from hvkit import distributed
from hvkit.api import ViewLoss

from .._ring_buffer import ring_slots, ring_write
from ._precision import full_precision
from ._views import check_views


def queue_info_nce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float) -> torch.Tensor:
    """``mean_i -log softmax([q_i . k_i, q_i . n_1, …, q_i . n_K] / tau)[0]``, q and stopgrad(k) L2-normalised.

    ``queue`` (K, D) holds unit keys, taken as constants. The (B, K) negative logits are
    reduced by one log-sum-exp per query, never concatenated with the positives.
    """
    q = F.normalize(q, dim=1) / temperature
    positive = (q * F.normalize(k.detach(), dim=1)).sum(dim=1)
    negatives = torch.logsumexp(q @ queue.detach().to(q.dtype).T, dim=1)
    return (torch.logaddexp(positive, negatives) - positive).mean()


class MoCoV2Loss(ViewLoss):
    """MoCo v2 (He et al. 2020; Chen et al. 2020): a query must pick its key among a queue of past keys.

    ``forward(online, target) = mean_i -log( e^{q_i.k_i/tau} / (e^{q_i.k_i/tau} + sum_j e^{q_i.n_j/tau}) )``
    (:func:`queue_info_nce`) with q the normalised online output, k the normalised momentum
    teacher's output of the other view (no gradient) and n_j the ``queue_size`` keys in the
    queue (no gradient). ``ssl_pretrain`` with ``teacher_momentum`` (the paper: 0.999, a
    constant; hvkit raises it to 1 on a cosine) computes the keys. ``symmetric`` False (the
    default, the paper's form): only the first global view is a query, ``loss(o_1, t_2)``,
    and each step enqueues the B keys of the second view; True (MoCo v3's and common practice,
    as the official CIFAR demo's option): both directions averaged, ``(loss(o_1, t_2) +
    loss(o_2, t_1)) / 2`` — half that demo's sum — and each step enqueues both views' 2B keys.
    With multi-crop local views each is a query against both global keys.

    The queue (``queue_size`` x ``embedding_dim``, the paper's K = 65536; scale it to the data)
    starts as random unit vectors, as in the official code, and is a buffer with its write
    position, so checkpoints hold it. Once per training step, after the loss,
    :meth:`observe_teacher` writes that step's normalised keys over the oldest entries; across
    processes each view's keys are gathered from every rank first (in rank order), so every
    rank holds the same queue, in the order one process on the whole batch would, as the
    official code's ``concat_all_gather``. The loss itself is
    per-query given the queue, so nothing else is gathered (``needs_global_batch`` False: each
    rank's loss over its own queries, gradients averaged by DDP). The official code's
    shuffled BatchNorm for the key encoder is not reproduced. Default ``temperature`` tau =
    0.2, MoCo v2's (v1: 0.07). Computed in float32 at least, with autocast off.
    """

    needs_global_batch: ClassVar[bool] = False
    needs_teacher: ClassVar[bool] = True

    def __init__(self, embedding_dim: int, queue_size: int = 65536, temperature: float = 0.2,
                 symmetric: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"moco_v2: embedding_dim must be at least 1, got {embedding_dim}")
        if queue_size < 1:
            raise ValueError(f"moco_v2: queue_size must be at least 1, got {queue_size}; the paper uses 65536")
        if temperature <= 0:
            raise ValueError(f"moco_v2: temperature must be > 0, got {temperature}; the paper uses 0.2")
        self.embedding_dim = embedding_dim
        self.queue_size = queue_size
        self.temperature = temperature
        self.symmetric = symmetric
        self.register_buffer("queue", F.normalize(torch.randn(queue_size, embedding_dim), dim=1))
        self.register_buffer("position", torch.zeros((), dtype=torch.int64))

    @full_precision
    def forward(self, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_views("moco_v2", online, target)
        self._check_dim(online)
        return queue_info_nce(online, target, self.queue, self.temperature)

    @torch.no_grad()
    def observe_teacher(self, teacher_views: list[torch.Tensor]) -> None:
        """Enqueue this step's keys (the second view's; both views' when ``symmetric``), every rank's, oldest out.

        The queue is replaced, not written in place: the step's loss, whose backward pass
        runs after this call, keeps the queue it was computed with.
        """
        views = list(teacher_views) if self.symmetric else [teacher_views[1]]
        for view in views:
            self._check_dim(view)
        keys = F.normalize(torch.cat([distributed.gather(view) for view in views]).to(self.queue.dtype), dim=1)
        slots = ring_slots(self.position, keys.shape[0], self.queue_size)  # of more keys than fit, the newest
        self.queue = ring_write(self.queue, keys, slots, in_place=False)
        self.position.copy_((self.position + keys.shape[0]) % self.queue_size)

    def _check_dim(self, z: torch.Tensor) -> None:
        if z.shape[1] != self.embedding_dim:
            raise ValueError(f"moco_v2: views have D = {z.shape[1]} but the queue holds keys of embedding_dim = "
                             f"{self.embedding_dim}; set embedding_dim to the head's out_dim")
