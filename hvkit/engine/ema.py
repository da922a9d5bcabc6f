"""An exponential moving average of modules' weights (Polyak averaging, "model EMA")."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from hvkit import distributed


class ModelEma:
    """Shadow copies of ``modules``' weights that follow them as an exponential moving average.

    The shadow starts at the modules' weights theta_0 when it is made; its k-th update
    (k = 0, 1, ...), after the optimiser step that gives theta_{k+1}, is

        bar_theta <- tau_k bar_theta + (1 - tau_k) theta_{k+1},
        tau_k = min(tau, (1 + k) / (10 + k)) with ``warmup``, else tau,

    so with warm-up the random initialisation weighs little in the early averages (TensorFlow's
    ``ExponentialMovingAverage`` with ``num_updates``). Polyak & Juditsky 1992; Tarvainen &
    Valpola 2017 (mean teacher); timm's ``ModelEmaV3``. Every floating-point tensor of each
    module's ``state_dict`` is averaged, BatchNorm's running statistics included; the others
    (``num_batches_tracked``) are copied. DDP-wrapped modules are read through
    :func:`hvkit.distributed.unwrap`.
    """

    def __init__(self, modules: dict[str, nn.Module], decay: float, warmup: bool = True):
        self.modules, self.decay, self.warmup = modules, decay, warmup
        self.updates = 0
        self.shadow = {name: {key: t.detach().clone() for key, t in self._live(name).items()} for name in modules}

    def _live(self, name: str) -> dict[str, torch.Tensor]:
        return {key: t for key, t in distributed.unwrap(self.modules[name]).state_dict().items()
                if isinstance(t, torch.Tensor)}

    def decay_at(self, k: int) -> float:
        """tau_k of the k-th update (k = 0 for the first)."""
        return min(self.decay, (1 + k) / (10 + k)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        """Move the shadow towards the modules' current weights by ``1 - tau_k``."""
        averaged, targets = [], []
        for name in self.modules:
            for key, live in self._live(name).items():
                if live.is_floating_point():
                    averaged.append(self.shadow[name][key])
                    targets.append(live)
                else:
                    self.shadow[name][key].copy_(live)
        torch._foreach_lerp_(averaged, targets, 1.0 - self.decay_at(self.updates))
        self.updates += 1

    def copy_to(self) -> None:
        """Overwrite the modules' weights with the averages."""
        self._load(self.shadow)

    @contextmanager
    def swapped(self) -> Iterator[None]:
        """The modules hold the averages inside the block and their own weights again after it."""
        own = {name: {key: t.clone() for key, t in self._live(name).items()} for name in self.modules}
        self.copy_to()
        try:
            yield
        finally:
            self._load(own)

    @torch.no_grad()
    def _load(self, weights: dict[str, dict[str, torch.Tensor]]) -> None:
        """Copy ``weights`` ({module: {key: tensor}}) into the modules."""
        for name in self.modules:
            for key, live in self._live(name).items():
                live.copy_(weights[name][key])

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = int(state["updates"])
        for name, tensors in self.shadow.items():
            for key, t in tensors.items():
                t.copy_(state["shadow"][name][key])
