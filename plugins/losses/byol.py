"""BYOL: an online prediction regresses a momentum teacher's output (Grill et al., NeurIPS 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views
from .simsiam import check_predictor_input, checked_prediction_mlp


def normalized_squared_error(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """mean_i ||p_i/||p_i|| - z_i/||z_i|| ||^2 = mean_i (2 - 2 cos(p_i, stopgrad(z_i))): the paper's Eq. 2."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


class BYOLLoss(ViewLoss):
    """BYOL (Grill et al. 2020): the online prediction of one view matches the teacher's output of another.

    ``forward(online, target) = mean_i (2 - 2 cos(q(online_i), stopgrad(target_i)))``, in [0, 4]
    with 0 perfect agreement. ``target`` is the momentum (EMA) teacher's output: ``ssl_pretrain``
    with ``teacher_momentum`` computes it and symmetrises, ``(loss(o_a, t_b) + loss(o_b, t_a)) / 2``
    (the paper sums the two directions). The predictor q (:func:`~.simsiam.prediction_mlp`, ``embedding_dim``
    → ``predictor_dim`` → ``embedding_dim``, default hidden 4096 as in the paper; its first layer
    has no bias, which BYOL's has but the BatchNorm after it removes) is a trainable parameter of
    this loss, applied to each call's batch on its own; ``train.loss_lr`` gives it its own
    learning rate. Per-sample, so nothing is gathered across processes. Computed in float32 at
    least, with autocast off.
    """

    needs_global_batch = False
    needs_teacher = True

    def __init__(self, embedding_dim: int, predictor_dim: int = 4096) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.predictor = checked_prediction_mlp("byol", embedding_dim, predictor_dim, default=4096)

    @full_precision
    def forward(self, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_views("byol", online, target, min_batch=2)
        check_predictor_input("byol", online, self.embedding_dim)
        return normalized_squared_error(self.predictor(online), target)
