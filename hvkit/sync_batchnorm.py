"""BatchNorm over the global batch under several processes, on any backend (gloo on the CPU included).

BatchNorm (Ioffe & Szegedy 2015) normalises each channel by its batch mean and variance. Under DDP
each rank holds 1/W of the batch, and by its own share's statistics a W-process run computes other
steps than one process does. torch's ``nn.SyncBatchNorm`` runs on GPUs only; this one reduces the
statistics with ``all_reduce`` on whatever backend the group uses. Per channel, over every rank's
elements (N of them):

    forward:  S1 = Σ x, S2 = Σ x² (float64, one all-reduce), μ = S1 / N, σ² = S2 / N − μ²,
              x̂ = (x − μ) / √(σ² + ε), y = γ x̂ + β; running statistics updated with μ and the
              unbiased N / (N − 1) σ², as ``nn.BatchNorm`` does;
    backward: with g = ∂L/∂y on this rank, Σ g and Σ g x̂ over every rank (one all-reduce),
              ∂L/∂x = γ / √(σ² + ε) · (g − Σ g / N − x̂ Σ g x̂ / N); ∂L/∂γ = Σ g x̂ and ∂L/∂β = Σ g
              over this rank's elements, which DDP then averages like every parameter gradient.

The backward sums every rank's upstream gradient, so each rank's input gradient is that of the sum
of the ranks' losses; DDP's average over ranks then gives the gradient of their mean, which is one
process's loss on the whole batch (``tests/distributed/test_sync_batchnorm.py``). In evaluation,
or in a single process, it is plain BatchNorm.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from hvkit import distributed


class _GlobalBatchNorm(torch.autograd.Function):
    """``(y, μ, N / (N − 1) σ²)`` of the formulas above: the output, and the statistics for the running ones."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None,
                eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.input_dtype, dtype = x.dtype, torch.promote_types(x.dtype, torch.float32)
        x = x.to(dtype)
        dims = [0, *range(2, x.dim())]
        shape = [1, -1] + [1] * (x.dim() - 2)
        wide = x.double()
        count = wide.new_full((x.shape[1],), x.numel() / x.shape[1])
        stats = torch.stack([wide.sum(dims), (wide * wide).sum(dims), count])
        dist.all_reduce(stats)
        total = stats[2]
        mean = stats[0] / total
        var = (stats[1] / total - mean * mean).clamp_min(0)
        invstd = (var + eps).rsqrt().to(dtype)
        xhat = (x - mean.to(dtype).view(shape)) * invstd.view(shape)
        y = xhat if weight is None else xhat * weight.to(dtype).view(shape) + bias.to(dtype).view(shape)
        ctx.save_for_backward(xhat, invstd, weight)
        ctx.total = total.to(dtype).view(shape)
        unbiased = var * total / (total - 1).clamp_min(1)
        ctx.mark_non_differentiable(mean, unbiased)
        return y, mean, unbiased

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, *_: Any) -> tuple[torch.Tensor | None, ...]:
        xhat, invstd, weight = ctx.saved_tensors
        grad = grad.to(xhat.dtype)
        dims = [0, *range(2, grad.dim())]
        shape = [1, -1] + [1] * (grad.dim() - 2)
        local = torch.stack([grad.sum(dims), (grad * xhat).sum(dims)])
        summed = local.clone()
        dist.all_reduce(summed)
        scale = invstd if weight is None else invstd * weight.to(xhat.dtype)
        dx = scale.view(shape) * (grad - summed[0].view(shape) / ctx.total
                                  - xhat * summed[1].view(shape) / ctx.total)
        if weight is None:
            return dx.to(ctx.input_dtype), None, None, None
        return dx.to(ctx.input_dtype), local[1].to(weight.dtype), local[0].to(weight.dtype), None


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are every rank's (module docstring); plain BatchNorm otherwise."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"SyncBatchNorm expects (N, C, ...) input, got {input.dim()} dimension(s)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_statistics = self.training or self.running_mean is None
        if not (batch_statistics and distributed.active()):
            return super().forward(x)
        self._check_input_dim(x)
        y, mean, var = _GlobalBatchNorm.apply(x, self.weight, self.bias, self.eps)
        if self.training and self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(var.to(self.running_var.dtype), factor)
        return y


def convert(module: nn.Module) -> nn.Module:
    """``module`` with every BatchNorm (1d, 2d, 3d; not torch's SyncBatchNorm) replaced by a :class:`SyncBatchNorm`
    holding the same parameters and buffers; the module itself when it is one."""
    if isinstance(module, _BatchNorm) and not isinstance(module, (SyncBatchNorm, nn.SyncBatchNorm)):
        synced = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                               module.track_running_stats)
        for name, value in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            setattr(synced, name, value)
        synced.train(module.training)
        return synced
    for name, child in module.named_children():
        module.add_module(name, convert(child))
    return module

