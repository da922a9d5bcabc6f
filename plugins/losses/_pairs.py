"""What the pair and triplet losses share: the batch's distance matrix and the reduction of their terms."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def euclidean_distances(embeddings: torch.Tensor, normalize: bool) -> torch.Tensor:
    """(B, B) Euclidean distances between the rows, L2-normalised first when ``normalize``: PML's ``LpDistance``."""
    if normalize:
        embeddings = F.normalize(embeddings, dim=1)
    return torch.cdist(embeddings, embeddings)


def reduce_terms(losses: torch.Tensor, terms: torch.Tensor | int, reduction: str) -> torch.Tensor:
    """Sum over the count of positive terms (``nonzero_mean``, PML's AvgNonZeroReducer) or over ``terms``, the
    count of all valid ones (``mean``); 0 when there are none."""
    count = (losses > 0).sum() if reduction == "nonzero_mean" else torch.as_tensor(terms, device=losses.device)
    return losses.sum() / count.clamp(min=1)
