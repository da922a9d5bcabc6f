"""What the margin miners share: the pair matrix they threshold, Euclidean distance or cosine similarity."""

from __future__ import annotations

from typing import Literal

import torch

from hvkit_plugins.losses._pairs import cosine_similarities, euclidean_distances

Distance = Literal["euclidean", "cosine"]


def check_distance(name: str, distance: str, normalize: bool) -> None:
    """Refuse an unknown ``distance`` and ``normalize=False`` with cosine (which always normalises)."""
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"{name}: distance must be 'euclidean' or 'cosine', got {distance!r}")
    if distance == "cosine" and not normalize:
        raise ValueError(f"{name}: normalize=False needs distance 'euclidean'; cosine similarity always "
                         "normalises")


def pair_matrix(embeddings: torch.Tensor, distance: str, normalize: bool) -> torch.Tensor:
    """(B, B) Euclidean distances (of L2-normalised rows when ``normalize``) or cosine similarities of the rows.

    These are pytorch-metric-learning's ``LpDistance`` and ``CosineSimilarity`` matrices, bit for bit in float32
    and float64; half precision is promoted to float32 (``torch.cdist`` has no float16).
    """
    x = embeddings.to(torch.promote_types(embeddings.dtype, torch.float32))
    return cosine_similarities(x) if distance == "cosine" else euclidean_distances(x, normalize)
