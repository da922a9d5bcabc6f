"""LARS: layer-wise adaptive rate scaling (You, Gitman & Ginsburg 2017), as VICReg trains with it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose step for each weight tensor is scaled to its own norm.

    For a parameter ``w`` with gradient ``g`` (``lr`` the scheduled rate, ``m`` the momentum buffer)::

        u = g + weight_decay * w
        u = u * eta * ||w|| / ||u||      (trust ratio; 1 where either norm is 0)
        m = momentum * m + u
        w = w - lr * m

    As in Bardes et al. (VICReg, ICLR 2022) and Barlow Twins, one-dimensional parameters
    (biases, normalisation scales) skip both the weight decay and the trust ratio when
    ``exclude_1d`` (the default), so they follow plain SGD with momentum. The paper's
    setting: ``lr = 0.2 * batch / 256``, ``weight_decay = 1e-6``, ``eta = 0.001``, momentum 0.9,
    a 10-epoch warm-up then cosine decay.
    """

    def __init__(self, params: Iterable[Any], lr: float = 0.2, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 0.001, exclude_1d: bool = True):
        if lr < 0 or not 0 <= momentum < 1 or weight_decay < 0 or eta <= 0:
            raise ValueError(f"LARS: need lr >= 0, 0 <= momentum < 1, weight_decay >= 0 and eta > 0; "
                             f"got lr={lr}, momentum={momentum}, weight_decay={weight_decay}, eta={eta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      exclude_1d=exclude_1d))

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for w in group["params"]:
                if w.grad is None:
                    continue
                update = w.grad
                if not (group["exclude_1d"] and w.ndim <= 1):
                    update = update.add(w, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.linalg.vector_norm(w), torch.linalg.vector_norm(update)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, 1.0)
                    update = update * ratio
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                buffer = state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                w.add_(buffer, alpha=-group["lr"])
        return loss
