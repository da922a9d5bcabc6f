"""Scores of an explicit list of (i, j) pairs, in chunks.

Memory is two (``chunk_size``, D) gather buffers and the (P,) answer, never a P × D
array, so tens of millions of pairs score in a few seconds.
"""

from __future__ import annotations

import numpy as np
import torch

from .backend import prepare_tensors


def score_pairs(embeddings: np.ndarray | torch.Tensor, pairs: np.ndarray,
                reference: np.ndarray | torch.Tensor | None = None, *, metric: str = "cosine",
                chunk_size: int = 65536, device: str = "cpu") -> np.ndarray:
    """Similarity of ``embeddings[i]`` and ``reference[j]`` (``embeddings[j]`` without a reference) for each row ``(i, j)`` of ``pairs``.

    ``pairs`` is an integer (P, 2) array; the answer is (P,) float32, higher = more alike
    (cosine, inner product, or minus the squared L2 distance).
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be an integer (P, 2) array of (i, j) indices, got {pairs.dtype} {pairs.shape}")
    left, right = prepare_tensors(embeddings, reference, metric, device, ("embeddings", "reference"))
    dev = left.device
    for column, rows, name in ((0, len(left), "embeddings"), (1, len(right), "reference" if reference is not None else "embeddings")):
        if len(pairs) and (pairs[:, column].min() < 0 or pairs[:, column].max() >= rows):
            raise ValueError(f"pairs[:, {column}] must index the {rows} rows of {name}")
    index = torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.int64)).to(dev)
    out = torch.empty(len(pairs), device=dev)
    a = torch.empty(min(chunk_size, len(pairs)), left.shape[1], device=dev)
    b = torch.empty_like(a)
    for start in range(0, len(pairs), chunk_size):
        stop = min(start + chunk_size, len(pairs))
        n = stop - start
        torch.index_select(left, 0, index[start:stop, 0], out=a[:n])
        torch.index_select(right, 0, index[start:stop, 1], out=b[:n])
        if metric == "l2":
            torch.sum(a[:n].sub_(b[:n]).square_(), 1, out=out[start:stop]).neg_()
        else:
            torch.sum(a[:n].mul_(b[:n]), 1, out=out[start:stop])
    return out.cpu().numpy()
