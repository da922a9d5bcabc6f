"""Feature-level fusion: several backbones side by side, each centred and L2-normalised."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hvkit.api import Component


class Concat(nn.Module):
    """Feature fusion: several backbones side by side, each centred and L2-normalised.

    f(x) = [n(g_1(x) − μ_1); …; n(g_M(x) − μ_M)], n(v) = v / ‖v‖. Each member's features are
    centred on its own mean μ_m (the ``means`` buffer, zero until set; the ``ensemble`` stage
    sets it to the members' means over the training images) and L2-normalised, so every member
    weighs the same: the cosine of two fused embeddings is the mean of the members' cosines,
    cos(f(a), f(b)) = (1/M) Σ_m cos(g_m(a) − μ_m, g_m(b) − μ_m) — score fusion by the sum rule
    (Kittler et al. 1998, "On Combining Classifiers"), while a fitted verifier (WCCN, the SSL-HV
    head) sees the joint features. With ``whiten`` each member's centred features are also
    mapped by its own matrix W_m before the normalisation, n((g_m(x) − μ_m) W_m) (the
    ``transform`` buffer, block-diagonal, the identity until set; the ``ensemble`` stage sets
    each block to the member's within-writer whitening), so the fused cosine is the mean of
    the members' WCCN cosines.
    """

    def __init__(self, members: list[Component["backbone"]], whiten: bool = False):
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"concat: members must list at least two backbones, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.dims = [int(m.embedding_dim) for m in self.members]
        self.embedding_dim = sum(self.dims)
        self.register_buffer("means", torch.zeros(self.embedding_dim))
        self.register_buffer("transform", torch.eye(self.embedding_dim) if whiten else None)

    def member_features(self, images: torch.Tensor) -> torch.Tensor:
        """The members' raw features, concatenated (B, Σ D_m), before centring and normalising.

        Half-precision outputs (under autocast) are promoted to float32; float64 stays float64.
        """
        parts = [member(images) for member in self.members]
        return torch.cat([p.to(torch.promote_types(p.dtype, torch.float32)) for p in parts], dim=1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        centred = self.member_features(images) - self.means
        if self.transform is not None:
            centred = centred @ self.transform.to(centred.dtype)
        parts = centred.split(self.dims, dim=1)
        return torch.cat([F.normalize(part, dim=1) for part in parts], dim=1)
