"""Scores of an explicit list of (i, j) pairs, without ever holding a pairs × dim array.

With FAISS on the CPU, one call of ``pairwise_indexed_inner_product`` (or ``_L2sqr``)
reads the two rows of each pair straight from the embeddings; otherwise torch gathers
``chunk_size`` pairs at a time into two reusable buffers. Either way memory is the (P,)
answer plus at most two (``chunk_size``, D) buffers, so tens of millions of pairs score in
seconds.
"""

from __future__ import annotations

import numpy as np
import torch

from .backend import faiss_module, prepare_tensors, resolve_engine


def score_pairs(embeddings: np.ndarray | torch.Tensor, pairs: np.ndarray,
                reference: np.ndarray | torch.Tensor | None = None, *, metric: str = "cosine",
                engine: str = "auto", chunk_size: int = 65536, device: str = "cpu") -> np.ndarray:
    """Similarity of ``embeddings[i]`` and ``reference[j]`` (``embeddings[j]`` without a reference) for each row ``(i, j)`` of ``pairs``.

    ``pairs`` is an integer (P, 2) array; the answer is (P,) float32, higher = more alike
    (cosine, inner product, or minus the squared L2 distance). FAISS does the work on the
    CPU when installed (``engine="auto"``); torch on ``device`` otherwise.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be >= 1")
    pairs = np.asarray(pairs)
    if pairs.ndim != 2 or pairs.shape[1] != 2 or not np.issubdtype(pairs.dtype, np.integer):
        raise ValueError(f"pairs must be an integer (P, 2) array of (i, j) indices, got {pairs.dtype} {pairs.shape}")
    left, right = prepare_tensors(embeddings, reference, metric, device, ("embeddings", "reference"))
    for column, rows, name in ((0, len(left), "embeddings"),
                               (1, len(right), "embeddings" if reference is None else "reference")):
        if len(pairs) and (pairs[:, column].min() < 0 or pairs[:, column].max() >= rows):
            raise ValueError(f"pairs[:, {column}] must index the {rows} rows of {name}")
    if resolve_engine(engine) == "faiss" and left.device.type == "cpu":
        return _faiss_scores(left.numpy(), right.numpy(), pairs, metric)
    index = torch.from_numpy(np.ascontiguousarray(pairs, dtype=np.int64)).to(left.device)
    out = torch.empty(len(pairs), device=left.device)
    a = torch.empty(min(chunk_size, len(pairs)), left.shape[1], device=left.device)
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


def _faiss_scores(left: np.ndarray, right: np.ndarray, pairs: np.ndarray, metric: str) -> np.ndarray:
    faiss = faiss_module()
    first = np.ascontiguousarray(pairs[:, 0], dtype=np.int64)
    second = np.ascontiguousarray(pairs[:, 1], dtype=np.int64)
    out = np.empty(len(pairs), np.float32)
    kernel = faiss.pairwise_indexed_L2sqr if metric == "l2" else faiss.pairwise_indexed_inner_product
    kernel(left.shape[1], len(pairs), faiss.swig_ptr(left), faiss.swig_ptr(first), faiss.swig_ptr(right),
           faiss.swig_ptr(second), faiss.swig_ptr(out))
    if metric == "l2":
        np.negative(out, out=out)
    return out
