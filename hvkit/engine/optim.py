"""Optimisers and LR schedulers from recipe specs (any ``torch.optim`` class, or LARS, by name)."""

from __future__ import annotations

import inspect
from typing import Any

import torch

from .lars import LARS


def optimizer_classes() -> dict[str, type]:
    """Every optimiser a recipe may name: ``torch.optim``'s classes and hvkit's own ``LARS``."""
    found = {name: cls for name, cls in vars(torch.optim).items()
             if inspect.isclass(cls) and issubclass(cls, torch.optim.Optimizer) and cls is not torch.optim.Optimizer}
    return {**found, "LARS": LARS}


def scheduler_classes() -> dict[str, type]:
    """Every LR scheduler a recipe may name: ``torch.optim.lr_scheduler``'s classes."""
    base = torch.optim.lr_scheduler.LRScheduler
    return {name: cls for name, cls in vars(torch.optim.lr_scheduler).items()
            if inspect.isclass(cls) and issubclass(cls, base) and cls is not base and not name.startswith("_")}


def build_optimizer(spec: dict[str, Any], groups: list[dict[str, Any]]) -> torch.optim.Optimizer:
    """``{name: AdamW, lr: ..., ...}`` over parameter groups (per-group ``lr`` kept)."""
    kwargs = {k: v for k, v in spec.items() if k != "name"}
    return optimizer_classes()[spec["name"]](groups, **kwargs)


def build_scheduler(spec: dict[str, Any] | None, optimizer: torch.optim.Optimizer,
                    total_steps: int) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-step scheduler; ``T_max``/``total_steps`` default to the stage's step count.

    ``warmup_steps`` (hvkit's own key) prepends a linear warm-up.
    """
    if spec is None:
        return None
    kwargs = {k: v for k, v in spec.items() if k not in ("name", "warmup_steps")}
    cls = scheduler_classes()[spec["name"]]
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
