"""Optimisers and LR schedulers from recipe specs (any ``torch.optim`` class by name)."""

from __future__ import annotations

import inspect
from typing import Any

import torch


def build_optimizer(spec: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``{name: AdamW, lr: ..., ...}`` over parameter groups (per-group ``lr`` kept)."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return getattr(torch.optim, spec["name"])(groups, **kwargs)


def build_scheduler(spec: dict[str, Any] | None, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step scheduler; ``T_max``/``total_steps`` default to the stage's step count.

    ``warmup_steps`` (hvkit's own key) prepends a linear warm-up.
    """
    if spec is None:
        return None
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps")}
    cls = getattr(torch.optim.lr_scheduler, spec["name"])
    accepted = inspect.signature(cls).parameters
    warmup = int(spec.get("warmup_steps", 0))
    for key in ("T_max", "total_steps", "total_iters"):
        if key in accepted and key not in kwargs:
            kwargs[key] = max(1, total_steps - warmup)
    if "max_lr" in accepted and "max_lr" not in kwargs:
        kwargs["max_lr"] = [g["lr"] for g in optimizer.param_groups]
    main = cls(optimizer, **kwargs)
    if warmup <= 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=1e-3, total_iters=warmup)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup])
