"""What the miners share: the pair matrix they threshold, Euclidean distance or cosine similarity, and the
reference set whose rows are the anchors' partners."""

from __future__ import annotations

from typing import Literal

import torch

from hvkit_plugins.losses._pairs import cosine_similarities, euclidean_distances, reference_set

Distance = Literal["euclidean", "cosine"]


def check_distance(name: str, distance: str, normalize: bool) -> None:
    """Refuse an unknown ``distance`` and ``normalize=False`` with cosine (which always normalises)."""
    if distance not in ("euclidean", "cosine"):
        raise ValueError(f"{name}: distance must be 'euclidean' or 'cosine', got {distance!r}")
    if distance == "cosine" and not normalize:
        raise ValueError(f"{name}: normalize=False needs distance 'euclidean'; cosine similarity always "
                         "normalises")


def pair_matrix(embeddings: torch.Tensor, distance: str, normalize: bool,
                reference: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) Euclidean distances (of L2-normalised rows when ``normalize``) or cosine similarities of the rows
    with those of ``reference`` (default: the rows themselves, R = B).

    These are pytorch-metric-learning's ``LpDistance`` and ``CosineSimilarity`` matrices, bit for bit in float32
    and float64; half precision is promoted to float32 (``torch.cdist`` has no float16).
    """
    dtype = torch.promote_types(embeddings.dtype, torch.float32)
    x = embeddings.to(dtype)
    r = None if reference is None or reference is embeddings else reference.to(dtype)
    return cosine_similarities(x, r) if distance == "cosine" else euclidean_distances(x, normalize, r)


def partners(name: str, embeddings: torch.Tensor, labels: torch.Tensor, ref_emb: torch.Tensor | None,
             ref_labels: torch.Tensor | None) -> tuple[torch.Tensor | None, torch.Tensor, bool]:
    """``(reference or None, its labels, is_batch)`` for a miner called with or without a reference set.

    The reference is None when the batch is its own (no (i, i) pairs then); its labels are on the embeddings'
    device either way. A reference given without its labels, or of the wrong shape, is a ValueError naming ``name``.
    """
    reference, ref_labels, is_batch = reference_set(name, embeddings, labels.to(embeddings.device), ref_emb,
                                                    ref_labels)
    return (None if is_batch else reference), ref_labels.to(embeddings.device), is_batch
