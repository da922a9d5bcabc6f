"""Shared precision guard of the losses that must not run in float16 or bfloat16."""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch


def _at_least_float32(value: Any) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(torch.promote_types(value.dtype, torch.float32))
    return value


def full_precision(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``forward(self, tensor, ...)`` with autocast off and floating positional tensors at least float32.

    The engine trains under CUDA autocast; a Gram matrix of float16 features squared overflows
    (entries reach D), ||C||_F^2 - sum C_ii^2 cancels at float16's three digits, and a cosine
    rounded to bfloat16 (steps of 1/256 near 1) then scaled by 256 before exp is off by up to
    0.5 in its logit. Labels, a miner's ``indices_tuple`` and keyword arguments pass unchanged.
    """

    @functools.wraps(forward)
    def wrapper(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        with torch.autocast(args[0].device.type, enabled=False):
            return forward(self, *map(_at_least_float32, args), **kwargs)

    return wrapper
