"""SimSiam: a predictor and a stop-gradient between two views (Chen & He, CVPR 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def prediction_mlp(embedding_dim: int, predictor_dim: int, last_bias: bool = True) -> nn.Sequential:
    """The paper's bottleneck predictor h: Linear(D, hidden) → BatchNorm1d → ReLU → Linear(hidden, D).

    The first layer has no bias, as in the official code: the BatchNorm after it removes one.
    ``last_bias=False`` drops the last layer's too (MoCo v3's predictor).
    """
    return nn.Sequential(nn.Linear(embedding_dim, predictor_dim, bias=False), nn.BatchNorm1d(predictor_dim),
                         nn.ReLU(), nn.Linear(predictor_dim, embedding_dim, bias=last_bias))


def checked_prediction_mlp(loss: str, embedding_dim: int, predictor_dim: int, default: int,
                           last_bias: bool = True) -> nn.Sequential:
    """:func:`prediction_mlp` after checking both sizes; the messages name ``loss`` and its default hidden width."""
    if embedding_dim < 1:
        raise ValueError(f"{loss}: embedding_dim must be at least 1, got {embedding_dim}")
    if predictor_dim < 1:
        raise ValueError(f"{loss}: predictor_dim must be at least 1, got {predictor_dim}; the default is {default}")
    return prediction_mlp(embedding_dim, predictor_dim, last_bias)


def check_predictor_input(loss: str, z: torch.Tensor, embedding_dim: int) -> None:
    """Raise ValueError unless the views ``z`` have the ``embedding_dim`` columns the predictor was built for."""
    if z.shape[1] != embedding_dim:
        raise ValueError(f"{loss}: views have D = {z.shape[1]} but the predictor was built for "
                         f"embedding_dim = {embedding_dim}; set embedding_dim to the head's output size")


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """D(p, z) = -mean_i cos(p_i, stopgrad(z_i)): the paper's Eq. 1 with the stop-gradient of Eq. 3."""
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


class SimSiamLoss(ViewLoss):
    """SimSiam (Chen & He 2021): each view's prediction matches the other view, whose gradient is stopped.

    ``L = (D(h(z_a), z_b) + D(h(z_b), z_a)) / 2`` with ``D(p, z) = -mean_i cos(p_i, stopgrad(z_i))``,
    so L lies in [-1, 1] and -1 is perfect agreement. The predictor h (:func:`prediction_mlp`,
    ``embedding_dim`` → ``predictor_dim`` → ``embedding_dim``, default hidden 512 as in the paper)
    is a trainable parameter of this loss, applied to each view on its own (its own BatchNorm
    statistics); ``train.loss_lr`` gives it its own learning rate. Per-sample, so nothing is
    gathered across processes: each process's predictor BatchNorm sees its own share, as in the
    official code. Computed in float32 at least, with autocast off.
    """

    needs_global_batch = False

    def __init__(self, embedding_dim: int, predictor_dim: int = 512) -> None:
        super().__init__()
        self.embedding_dim = embedding_dim
        self.predictor = checked_prediction_mlp("simsiam", embedding_dim, predictor_dim, default=512)

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("simsiam", z_a, z_b, min_batch=2)
        check_predictor_input("simsiam", z_a, self.embedding_dim)
        return (negative_cosine(self.predictor(z_a), z_b) + negative_cosine(self.predictor(z_b), z_a)) / 2
