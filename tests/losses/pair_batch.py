"""The labelled batch and mined tuples the pair and triplet loss tests share (Triplet, Contrastive)."""

from __future__ import annotations

import torch

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 1, 2, 0, 4, 2, 3])
TUPLES = [  # a miner's triplets (anchor, positive, negative), then its pairs (a1, p, a2, n)
    (torch.tensor([0, 1, 3, 7]), torch.tensor([3, 5, 8, 2]), torch.tensor([1, 0, 9, 4])),
    (torch.tensor([0, 3, 5]), torch.tensor([3, 8, 6]), torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 0, 11])),
]


def batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 7) -> torch.Tensor:
    """A (n, d) Gaussian batch requiring gradients, one per seed."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()
