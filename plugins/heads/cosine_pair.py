"""The cosine pair verifier: similarity of centred embeddings (no training)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CosinePair(nn.Module):
    """Pair verifier s(e1, e2) = cos(e1 − μ, e2 − μ), μ the mean labelled-train embedding.

    Centring removes the component shared by all images, which dominates the raw cosine of
    ReLU features; ``fit`` estimates μ (zero until then, or with ``centre: false``). The
    decision threshold is chosen on validation writers by the verification evaluator.
    """

    pair_verifier = True

    def __init__(self, in_dim: int, centre: bool = True):
        super().__init__()
        self.centre = centre
        self.out_dim = 1
        self.register_buffer("mean", torch.zeros(in_dim))

    def fit(self, embeddings: torch.Tensor) -> "CosinePair":
        if self.centre:
            self.mean = embeddings.float().mean(dim=0).to(self.mean.device)
        return self

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        return F.cosine_similarity(e1 - self.mean, e2 - self.mean, dim=1)
