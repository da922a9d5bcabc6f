"""TiCo: transformation invariance and covariance contrast (Zhu, Moraes, Karakulak, Sobol, Canziani & LeCun, 2022).

Zhu et al., "TiCo: Transformation Invariance and Covariance Contrast for Self-Supervised
Visual Representation Learning" (arXiv 2206.10698). With the unit embeddings z_i = a_i / |a_i|
of the first view and z'_i of the second (B images), the paper's Algorithm 1 moves a running
(uncentred) covariance C of the first view's embeddings, then uses it, at every step t:

    C_t = beta C_{t-1} + (1 - beta) Z^T Z / B,                  C_0 = 0
    L_t = -mean_i z_i . z'_i + rho mean_i z_i C_t z_i^T

The first term pulls the views together (transformation invariance); the second (covariance
contrast) pushes each embedding away from the directions where this and, decayed by beta per
step, earlier batches' embeddings lie: ``mean_i z_i C_t z_i^T = sum_s (1 - beta) beta^{t-s}
mean_{i,j} (z_i . z_j^{(s)})^2``, a contrast against an implicit memory of all past batches.
As in the pseudo-code the gradient flows through this step's ``Z^T Z / B`` in C_t, while
C_{t-1} is a constant; the second view enters the invariance term only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def second_moment(z: torch.Tensor) -> torch.Tensor:
    """``Z^T Z / B`` of the (B, D) unit embeddings Z."""
    return z.T @ z / z.shape[0]


def covariance_contrast(moment: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """``mean_i z_i C z_i^T``, computed as ``<C, Z^T Z / B>`` from Z's :func:`second_moment` (C symmetric)."""
    return (covariance * moment).sum()


class TiCoLoss(ViewLoss):
    """TiCo (Zhu et al. 2022): ``-mean_i z_i . z'_i + rho mean_i z_i C_t z_i^T``, C_t a running covariance of z.

    ``forward(z_a, z_b, *local_views)``: z_a's unit embeddings move the covariance, which is a
    buffer (``embedding_dim`` square, starting at 0), so checkpoints hold it:
    ``C_t = beta C_{t-1} + (1 - beta) Z_a^T Z_a / B``, with no gradient to C_{t-1}; the loss
    uses C_t, and in training mode C_t is kept for the next call. ``ssl_pretrain`` gives every
    view of a step in one call (:attr:`takes_local_views`), so C moves once per step, as in the
    paper, however many views: with multi-crop local views the value is ``ssl_pretrain``'s
    mean over the pairs (z_a, z_b), (z_a, l_j), (z_b, l_j), each pair (p, q) scoring
    ``-mean_i p_i . q_i + rho mean_i p_i C_t p_i^T`` with the one C_t (the paper has no
    multi-crop). Not symmetrised: z_b only enters the invariance term, as in the paper.

    ``teacher`` True: the momentum-encoder variant of the unofficial code and lightly's example,
    the second view through an EMA copy of backbone and projector, without gradient. The instance
    then declares :attr:`needs_teacher` (``ssl_pretrain`` needs ``teacher_momentum``) and, with
    :attr:`takes_local_views`, gets every view of a step in one call,
    ``forward(o_1, o_2, *local, teacher=(t_1, t_2))``. C moves once per step, by the first online
    view only, ``C_t = beta C_{t-1} + (1 - beta) O_1^T O_1 / B`` (the references' one online
    query, Algorithm 1's first branch). The value is the mean over ``ssl_pretrain``'s teacher
    pairs (p, q) of ``-mean_i p_i . q_i + rho mean_i p_i C_t p_i^T``: (o_1, t_2) alone with
    ``symmetric`` False (the default; the references' ``loss(online(x_0), momentum(x_1))``), also
    (o_2, t_1) with True (o_2 contrasts against C_t without moving it), and each local view
    against both t_1 and t_2: 1 + 2k or 2 + 2k pairs.

    Across processes the stage gathers the views (``needs_global_batch``), so C moves with the
    global batch, the same on every process. Defaults ``beta`` 0.9 and ``rho`` 20 are those of
    lightly's ``TiCoLoss`` and of the unofficial code it follows. Computed in float32 at least,
    with autocast off.
    """

    takes_local_views = True

    def __init__(self, embedding_dim: int, beta: float = 0.9, rho: float = 20.0, teacher: bool = False,
                 symmetric: bool = False) -> None:
        super().__init__()
        if embedding_dim < 1:
            raise ValueError(f"tico: embedding_dim must be at least 1, got {embedding_dim}")
        if not 0 <= beta < 1:
            raise ValueError(f"tico: beta must lie in [0, 1), got {beta}; lightly and the unofficial code use 0.9")
        if rho < 0:
            raise ValueError(f"tico: rho must be >= 0, got {rho}; lightly and the unofficial code use 20")
        if symmetric and not teacher:
            raise ValueError("tico: symmetric applies to the momentum-teacher variant only; set teacher: true "
                             "or remove symmetric")
        self.embedding_dim, self.beta, self.rho = embedding_dim, beta, rho
        self.needs_teacher, self.symmetric = teacher, symmetric
        self.register_buffer("covariance", torch.zeros(embedding_dim, embedding_dim))

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor, *local_views: torch.Tensor,
                teacher: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        check_views("tico", z_a, z_b, local_views=local_views)
        if z_a.shape[1] != self.embedding_dim:
            raise ValueError(f"tico: views have {z_a.shape[1]} features but the covariance is built for "
                             f"embedding_dim = {self.embedding_dim}; set embedding_dim to the head's out_dim")
        units = [F.normalize(z, dim=1) for z in (z_a, z_b, *local_views)]
        if teacher is None:
            if self.needs_teacher:
                raise ValueError("tico: built with teacher: true, it needs the momentum teacher's views, "
                                 "forward(z_1, z_2, *local, teacher=(t_1, t_2)); ssl_pretrain gives them with "
                                 "teacher_momentum")
            targets = units
            pairs = [(0, 1)] + [(g, v) for g in (0, 1) for v in range(2, len(units))]
        else:
            targets = self._teacher_units(teacher, z_a)
            pairs = [(v, g) for v in range(len(units)) for g in (0, 1) if g != v and (self.symmetric or v != 1)]
        moments = {p: second_moment(units[p]) for p in dict.fromkeys(p for p, _ in pairs)}
        covariance = self.beta * self.covariance.to(z_a.dtype) + (1 - self.beta) * moments[0]
        total = sum(-(units[p] * targets[q]).sum(dim=1).mean() + self.rho * covariance_contrast(moments[p], covariance)
                    for p, q in pairs)
        if self.training:
            self.covariance = covariance.detach().to(self.covariance.dtype)
        return total / len(pairs)

    def _teacher_units(self, teacher: tuple[torch.Tensor, ...], z_a: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's two global views as unit rows without gradient, checked against the online views."""
        if not self.needs_teacher:
            raise ValueError("tico: got teacher views but was built without teacher: true; set teacher: true "
                             "for the momentum-encoder variant")
        if len(teacher) != 2 or any(t.shape != z_a.shape for t in teacher):
            raise ValueError(f"tico: teacher needs the two global views' outputs of shape {tuple(z_a.shape)}, "
                             f"got {[tuple(t.shape) for t in teacher]}")
        return [F.normalize(t.detach().to(z_a.dtype), dim=1) for t in teacher]
