"""MoCo v3: a predicted query picks its momentum teacher's key among the batch's (Chen, Xie & He, ICCV 2021)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views
from .simsiam import check_predictor_input, checked_prediction_mlp


def scaled_info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """``2 tau * mean_i -log softmax_j(q_i . k_j / tau)[i]``, q and stopgrad(k) L2-normalised: the paper's Eq. 1, scaled."""
    logits = F.normalize(q, dim=1) @ F.normalize(k.detach(), dim=1).T / temperature
    return F.cross_entropy(logits, torch.arange(q.shape[0], device=q.device)) * (2 * temperature)


class MoCoV3Loss(ViewLoss):
    """MoCo v3 (Chen, Xie & He 2021): the predicted query of a view must pick the teacher's key of its other view.

    With ``q_i = h(online_i)/||h(online_i)||`` and ``k_j = stopgrad(target_j)/||target_j||``,
    ``forward(online, target) = 2 tau * mean_i -log( exp(q_i . k_i / tau) / sum_j exp(q_i . k_j / tau) )``:
    InfoNCE whose negatives are the other samples' keys, scaled by 2 tau as in the official
    code. ``target`` is the momentum (EMA) teacher's output: ``ssl_pretrain`` with
    ``teacher_momentum`` (the paper: 0.99, rising to 1 on a cosine) computes it and averages
    the two directions, ``(loss(o_a, t_b) + loss(o_b, t_a)) / 2`` — half the paper's sum.
    Default ``temperature`` tau = 0.2, the paper's (the official code's ResNet-50 runs keep
    its default 1.0). The predictor h (:func:`~.simsiam.prediction_mlp`, ``embedding_dim`` →
    ``predictor_dim`` → ``embedding_dim``, default hidden 4096 as in the paper; no bias in either
    layer, as in the official code) is a trainable parameter of this loss, applied to each
    call's batch on its own; ``train.loss_lr`` gives it its own learning rate.

    Across processes (``needs_global_batch``) the stage gathers both the online outputs and
    the teacher's keys, so every query is compared with the keys of the whole global batch,
    as the official code's key gather does, and the predictor's BatchNorm normalises over the
    global batch (as a SyncBatchNorm would). Computed in float32 at least, with autocast off.
    """

    needs_global_batch = True
    needs_teacher = True

    def __init__(self, embedding_dim: int, predictor_dim: int = 4096, temperature: float = 0.2) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"moco_v3: temperature must be > 0, got {temperature}; the paper uses 0.2")
        self.embedding_dim = embedding_dim
        self.temperature = temperature
        self.predictor = checked_prediction_mlp("moco_v3", embedding_dim, predictor_dim, default=4096,
                                                last_bias=False)

    @full_precision
    def forward(self, online: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_views("moco_v3", online, target, min_batch=2)
        check_predictor_input("moco_v3", online, self.embedding_dim)
        return scaled_info_nce(self.predictor(online), target, self.temperature)
