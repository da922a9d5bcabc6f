"""Which pixels made a score: integrated gradients (Sundararajan, Taly & Yan, ICML 2017)."""

from __future__ import annotations

from typing import Callable

import torch


def integrated_gradients(score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, baseline: torch.Tensor,
                         steps: int = 64, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pixel's share of ``score(image) - score(baseline)``, and the scores of the path's two ends.

    ``a_i = (x_i - x'_i) ∫_0^1 ∂F(x' + α (x - x')) / ∂x_i dα``, the integral by the midpoint rule over
    ``steps`` points α_k = (k + ½) / steps (exact when the gradient is linear along the path, as for
    a quadratic F). The shares add up to ``F(x) - F(x')`` (completeness), up to the rule's error,
    which falls as ``steps`` grows; a pixel equal to its baseline gets exactly 0. ``score`` maps a
    batch (B, …) of inputs shaped like ``image`` to B scores and must be differentiable; it is
    called on ``batch_size`` path points at a time. Returns ``(attributions shaped like image,
    tensor([F(x'), F(x)]))``.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"integrated gradients needs steps >= 1 and batch_size >= 1, got {steps} and {batch_size}")
    if image.shape != baseline.shape:
        raise ValueError(f"the image {tuple(image.shape)} and its baseline {tuple(baseline.shape)} differ in shape")
    delta = (image - baseline).detach()
    alphas = (torch.arange(steps, dtype=image.dtype, device=image.device) + 0.5) / steps
    total = torch.zeros_like(image)
    for chunk in alphas.split(batch_size):
        shape = (len(chunk),) + (1,) * image.dim()
        path = (baseline.detach() + chunk.view(shape) * delta).requires_grad_(True)
        (gradient,) = torch.autograd.grad(score(path).sum(), path)
        total += gradient.sum(dim=0)
    with torch.no_grad():
        ends = score(torch.stack([baseline, image])).detach()
    return delta * total / steps, ends
