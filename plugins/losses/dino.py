"""DINO: self-distillation from a centred, sharpened momentum teacher (Caron et al., ICCV 2021)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def distillation_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, center: torch.Tensor,
                               student_temperature: float,
                               teacher_temperature: float | torch.Tensor) -> torch.Tensor:
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
    ``center_momentum`` m = 0.9.

    Teacher-temperature warm-up (the official code's ``warmup_teacher_temp``, recommended
    with tau_t 0.07 when training is unstable): over the first ``warmup_steps`` training steps
    tau_t rises linearly from ``warmup_teacher_temperature`` to ``teacher_temperature``,
    ``tau_t(s) = tau_w + (tau_t - tau_w) min(s / warmup_steps, 1)`` at step s (the official
    code steps it per epoch); the step count is a buffer advanced by :meth:`observe_teacher`,
    so a resumed run continues the schedule. Default 0 steps: tau_t throughout, as the paper.
    ``embedding_dim`` is the head's K. Per-sample otherwise, so nothing is gathered across
    processes. Computed in float32 at least, with autocast off.
    """

    needs_global_batch = False
    needs_teacher = True

    def __init__(self, embedding_dim: int, student_temperature: float = 0.1, teacher_temperature: float = 0.04,
                 center_momentum: float = 0.9, warmup_teacher_temperature: float = 0.04,
                 warmup_steps: int = 0) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"dino: embedding_dim must be at least 1, got {embedding_dim}")
        for name, value, paper in (("student_temperature", student_temperature, 0.1),
                                   ("teacher_temperature", teacher_temperature, 0.04),
                                   ("warmup_teacher_temperature", warmup_teacher_temperature, 0.04)):
            if value <= 0:
                raise ValueError(f"dino: {name} must be > 0, got {value}; the paper uses {paper}")
        if not 0 <= center_momentum <= 1:
            raise ValueError(f"dino: center_momentum must lie in [0, 1], got {center_momentum}; the paper uses 0.9")
        if warmup_steps < 0:
            raise ValueError(f"dino: warmup_steps must be >= 0, got {warmup_steps}; 0 turns the warm-up off")
        self.embedding_dim = embedding_dim
        self.student_temperature = student_temperature
        self.teacher_temperature = teacher_temperature
        self.center_momentum = center_momentum
        self.warmup_teacher_temperature = warmup_teacher_temperature
        self.warmup_steps = warmup_steps
        self.register_buffer("center", torch.zeros(embedding_dim))
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

    def current_teacher_temperature(self) -> float | torch.Tensor:
        """tau_t at the current step (during the warm-up a 0-d tensor: no host sync), then ``teacher_temperature``."""
        if self.warmup_steps == 0:
            return self.teacher_temperature
        progress = (self.steps.to(self.center.dtype) / self.warmup_steps).clamp(max=1.0)
        start = self.warmup_teacher_temperature
        return start + (self.teacher_temperature - start) * progress

    @full_precision
    def forward(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        check_views("dino", student, teacher)
        self._check_dim(student)
        return distillation_cross_entropy(student, teacher, self.center, self.student_temperature,
                                          self.current_teacher_temperature())

    @torch.no_grad()
    def observe_teacher(self, teacher_views: list[torch.Tensor]) -> None:
        """``c <- m c + (1 - m) mean`` of the teacher's outputs of the global views, over every process's batch; one step on."""
        outputs = torch.cat(list(teacher_views)).to(self.center.dtype)
        self._check_dim(outputs)
        totals = torch.cat([outputs.sum(dim=0), outputs.new_tensor([outputs.shape[0]])])
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        self.center.lerp_(totals[:-1] / totals[-1], 1 - self.center_momentum)
        self.steps += 1

    def _check_dim(self, z: torch.Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.embedding_dim:
            raise ValueError(f"dino: views have shape {tuple(z.shape)} but the centre was built for embedding_dim "
                             f"= {self.embedding_dim} prototypes; set embedding_dim to the head's out_dim")
