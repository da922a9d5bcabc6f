"""Shared precision guard of the losses whose sums of squares overflow or cancel in float16."""

from __future__ import annotations

import functools
from typing import Callable

import torch


def full_precision(forward: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """Run ``forward(self, *tensors)`` with autocast off and every tensor at least float32.

    The engine trains under CUDA autocast; a Gram matrix of float16 features squared overflows
    (entries reach D), and ||C||_F^2 - sum C_ii^2 cancels at float16's three digits.
    """

    @functools.wraps(forward)
    def wrapper(self, *tensors: torch.Tensor) -> torch.Tensor:
        with torch.autocast(tensors[0].device.type, enabled=False):
            return forward(self, *(t.to(torch.promote_types(t.dtype, torch.float32)) for t in tensors))

    return wrapper
