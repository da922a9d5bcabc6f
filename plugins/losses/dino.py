"""DINO: self-distillation from a centred, sharpened momentum teacher (Caron et al., ICCV 2021)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def distillation_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                               student_temperature: float, teacher_temperature: float) -> torch.Tensor:
    """``mean_i -sum_k P_t(i)_k log P_s(i)_k``: the paper's Eq. 1, with its centring of the teacher.

    ``P_t(i) = softmax((stopgrad(t_i) - c) / tau_t)`` and ``P_s(i) = softmax(s_i / tau_s)``.
    """
    targets = F.softmax((teacher.detach() - center) / teacher_temperature, dim=1)
    return -(targets * F.log_softmax(student / student_temperature, dim=1)).sum(dim=1).mean()


class DINOLoss(ViewLoss):
    """DINO (Caron et al. 2021): the student's distribution over K prototypes matches the centred, sharpened teacher's.

    ``forward(student, teacher) = mean_i -sum_k softmax((t_i - c)/tau_t)_k log softmax(s_i/tau_s)_k``
    (:func:`distillation_cross_entropy`), no gradient to the teacher. Both inputs are K-way
    prototype logits: use the ``dino_head`` head, so that the momentum teacher, an EMA copy
    of backbone *and* head, scores its views with the EMA of the same prototypes. With
    ``teacher_momentum`` (the paper: 0.996, rising to 1 on a cosine) ``ssl_pretrain`` averages
    the loss over every (student view, other teacher global view) pair, each local view
    (``local_views``, DINO's multi-crop) against both global views, as the paper does.

    Centring: the centre c (a buffer of K values, so checkpoints hold it) starts at 0 and,
    once per training step after the loss (:meth:`observe_teacher`), becomes
    ``m c + (1 - m) mean(teacher outputs of both global views over the global batch)``;
    across processes the sums are all-reduced, as in the paper's code. Defaults are the
    paper's: ``student_temperature`` tau_s = 0.1, ``teacher_temperature`` tau_t = 0.04,
    ``center_momentum`` m = 0.9. Not implemented: the official code's optional linear warm-up
    of tau_t (its default keeps 0.04 throughout). ``embedding_dim`` is the head's K. Per-sample
    otherwise, so nothing is gathered across processes. Computed in float32 at least, with
    autocast off.
    """

    needs_global_batch = False
    needs_teacher = True

    def __init__(self, embedding_dim: int, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 center_momentum: float = 0.9) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"dino: embedding_dim must be at least 1, got {embedding_dim}")
        for name, value, paper in (("student_temperature", student_temperature, 0.1),
                                   ("teacher_temperature", teacher_temperature, 0.04)):
            if value <= 0:
                raise ValueError(f"dino: {name} must be > 0, got {value}; the paper uses {paper}")
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"dino: center_momentum must lie in [0, 1], got {center_momentum}; the paper uses 0.9")
        self.embedding_dim = embedding_dim
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(embedding_dim))

    @full_precision
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_views("dino", student, teacher)
        self._check_dim(student)
        return distillation_cross_entropy(student, teacher, self.center, self.student_temperature,
                                          self.teacher_temperature)

    @torch.no_grad()
    def observe_teacher(self, teacher_views: list[torch.Tensor]) -> None:
        """``c <- m c + (1 - m) mean`` of the teacher's outputs of the global views, over every process's batch."""
        outputs = torch.cat(list(teacher_views)).to(self.center.dtype)
        self._check_dim(outputs)
        totals = torch.cat([outputs.sum(dim=0), outputs.new_tensor([outputs.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        self.center.lerp_(totals[:-1] / totals[-1], 1 - self.center_momentum)

    def _check_dim(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"dino: views have shape {tuple(z.shape)} but the centre was built for embedding_dim "
                             f"= {self.embedding_dim} prototypes; set embedding_dim to the head's out_dim")
