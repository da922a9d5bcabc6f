"""Alignment and uniformity on the hypersphere (Wang & Isola, ICML 2020).

Wang & Isola, "Understanding Contrastive Representation Learning through Alignment and
Uniformity on the Hypersphere". On L2-normalised embeddings f(x) of two views x_i, y_i of
sample i:

    L_align(alpha) = mean_i ||f(x_i) - f(y_i)||^alpha                        (positive pairs close)
    L_uniform(t)   = log mean_{i < j} exp(-t ||f(x_i) - f(x_j)||^2)          (spread over the sphere)
    L = L_align(alpha) + lambda * (L_uniform(t) over the x + L_uniform(t) over the y) / 2

— the paper's objective, optimised directly in place of a contrastive loss; both terms are also
its diagnostics of a representation (lower is better). Uniformity is the log of the mean
Gaussian potential exp(-t ||u - v||^2), whose minimiser is the uniform distribution on the sphere.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from hvkit.api import ViewLoss

from ._precision import full_precision
from ._views import check_views


def alignment(x: torch.Tensor, y: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    """``mean_i ||x_i - y_i||^alpha`` over (B, D) rows; a pair at distance 0 has gradient 0 for every alpha > 0."""
    squared = (x - y).pow(2).sum(dim=1)
    apart = squared > 0
    return torch.where(apart, torch.where(apart, squared, 1.0).pow(alpha / 2), 0.0).mean()


def uniformity(z: torch.Tensor, t: float = 2.0) -> torch.Tensor:
    """``log mean_{i<j} exp(-t ||z_i - z_j||^2)`` over (B, D) unit rows, B >= 2.

    ``||z_i - z_j||^2 = 2 - 2 z_i . z_j`` for unit rows, so one Gram matrix and a log-sum-exp
    over its off-diagonal entries (each pair twice, the mean unchanged) give it.
    """
    n = z.shape[0]
    logits = (2 * t) * (z @ z.T) - 2 * t
    logits = logits.masked_fill(torch.eye(n, dtype=torch.bool, device=z.device), float("-inf"))
    return torch.logsumexp(logits.flatten(), dim=0) - math.log(n * (n - 1))


class AlignUniformLoss(ViewLoss):
    """Alignment + uniformity (Wang & Isola 2020): ``L_align(alpha) + lambda (L_uniform(t)(a) + L_uniform(t)(b)) / 2``.

    Both views are L2-normalised first; :func:`alignment` is the mean ``alpha``-th power of the
    positive pairs' distances, :func:`uniformity` the log mean Gaussian potential over each
    view's pairs i < j (the global batch's: ``needs_global_batch``). ``uniformity_weight`` is
    lambda. Defaults are the paper's: ``alpha`` 2, ``t`` 2, ``uniformity_weight`` 1. After a
    call, ``terms()`` gives the detached ``alignment`` and ``uniformity`` (the two views' mean,
    unweighted) of its value. Needs B >= 2. Computed in float32 at least, with autocast off.
    """

    def __init__(self, alpha: float = 2.0, t: float = 2.0, uniformity_weight: float = 1.0) -> None:
        super().__init__()
        for name, value in (("alpha", alpha), ("t", t)):
            if value <= 0:
                raise ValueError(f"align_uniform: {name} must be > 0, got {value}; the paper uses 2")
        if uniformity_weight < 0:
            raise ValueError(f"align_uniform: uniformity_weight must be >= 0, got {uniformity_weight}; "
                             "the paper uses 1")
        self.alpha = alpha
        self.t = t
        self.uniformity_weight = uniformity_weight
        self._terms: dict[str, torch.Tensor] = {}

    @full_precision
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        check_views("align_uniform", z_a, z_b, min_batch=2)
        z_a, z_b = F.normalize(z_a, dim=1), F.normalize(z_b, dim=1)
        aligned = alignment(z_a, z_b, self.alpha)
        uniform = (uniformity(z_a, self.t) + uniformity(z_b, self.t)) / 2
        self._terms = {"alignment": aligned.detach(), "uniformity": uniform.detach()}
        return aligned + self.uniformity_weight * uniform

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached ``alignment`` and (unweighted) ``uniformity`` parts."""
        return dict(self._terms)
