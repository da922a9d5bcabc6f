"""k-reciprocal re-ranking: pair similarities recomputed from the neighbourhoods of a set of images.

Zhong, Zheng, Cao & Li 2017, "Re-ranking Person Re-identification with k-reciprocal Encoding"
(CVPR); for writer retrieval, Jordan et al. 2020, "Re-ranking for Writer Identification and
Writer Retrieval" (DAS). The kNN lists come from :func:`~hvkit.index.knn` (FAISS, on the GPU with
faiss-gpu); the neighbourhood sets are sparse matrices, so memory grows with N × k1, not N².
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse

from .backend import prepare
from .vector_index import knn


def k_reciprocal_scores(embeddings: np.ndarray | torch.Tensor, pairs: np.ndarray, *, k1: int = 20, k2: int = 6,
                        weight: float = 0.3, chunk_size: int = 4096, device: str = "cpu") -> np.ndarray:
    """Re-ranked similarity ``1 − d*(p, g)`` of each row ``(p, g)`` of ``pairs`` within the set ``embeddings``.

    On L2-normalised rows, with ``d(p, g) = ‖x_p − x_g‖²`` and ``N(p, k)`` = p and its k nearest:

    - ``R(p, k) = {g ∈ N(p, k) : p ∈ N(g, k)}``, the k-reciprocal neighbours;
    - ``R*(p)`` = ``R(p, k1)`` joined by each ``R(q, round(k1/2))``, q ∈ ``R(p, k1)``, that shares
      more than two thirds of its members with ``R(p, k1)``;
    - ``V_p(g) ∝ exp(−d(p, g))`` on ``R*(p)``, 0 elsewhere, summing to 1; then replaced by the
      mean of ``V`` over ``N(p, k2 − 1)`` (local query expansion; ``k2 = 1`` keeps it);
    - ``d_J(p, g) = 1 − Σ min(V_p, V_g) / Σ max(V_p, V_g)`` (Jaccard distance of the two
      neighbourhoods) and ``d* = (1 − weight) d_J + weight · d``.

    The paper's distance is normalised per query by its largest value; hvkit keeps
    ``d ∈ [0, 4]`` as it is, so ``weight = 1`` gives ``2 cos − 1``. The score of a pair thus
    depends on every row of ``embeddings``: it is transductive. ``k1`` is clipped to N − 1.
    """
    check_settings(k1, k2, weight, "k-reciprocal re-ranking")
    x = prepare(embeddings, "cosine", "embeddings").astype(np.float64)
    n = len(x)
    if n < 2:
        raise ValueError(f"k-reciprocal re-ranking needs a set of at least 2 images, got {n}")
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs must index the {n} rows of the set")
    k1 = min(k1, n - 1)
    _, ids = knn(x.astype(np.float32), k1, metric="cosine", device=device)
    near = np.concatenate([np.arange(n)[:, None], ids], axis=1)
    reciprocal = _reciprocal(near, k1)
    half = _reciprocal(near, int(round(k1 / 2)))
    overlap = reciprocal.multiply((half @ reciprocal.T).T).tocoo()
    grows = overlap.data > 2.0 / 3.0 * np.diff(half.indptr)[overlap.col]
    expand = sparse.csr_matrix((np.ones(grows.sum()), (overlap.row[grows], overlap.col[grows])), shape=(n, n))
    support = ((reciprocal + expand @ half) > 0).tocoo()
    weights = np.exp(-_distances(x, support.row, support.col, chunk_size))
    v = sparse.csr_matrix((weights, (support.row, support.col)), shape=(n, n))
    v = sparse.diags(1.0 / np.asarray(v.sum(axis=1)).ravel()) @ v
    k2 = min(k2, k1 + 1)
    if k2 > 1:
        v = (_nearest(near, k2 - 1) @ v / k2).tocsr()
    mass = np.asarray(v.sum(axis=1)).ravel()
    out = np.empty(len(pairs))
    for start in range(0, len(pairs), chunk_size):
        p, g = pairs[start:start + chunk_size, 0], pairs[start:start + chunk_size, 1]
        shared = np.asarray(v[p].minimum(v[g]).sum(axis=1)).ravel()
        jaccard = 1.0 - shared / (mass[p] + mass[g] - shared)
        out[start:start + len(p)] = 1.0 - (1.0 - weight) * jaccard - weight * _distances(x, p, g, chunk_size)
    return out


def check_settings(k1: int, k2: int, weight: float, who: str) -> None:
    """ValueError, prefixed by ``who``, unless k1, k2 >= 1 and weight lies in [0, 1]."""
    if k1 < 1 or k2 < 1:
        raise ValueError(f"{who}: k1={k1} and k2={k2} must be >= 1")
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"{who}: weight={weight} must lie in [0, 1]")


def _nearest(near: np.ndarray, k: int) -> sparse.csr_matrix:
    """Row p marks ``N(p, k)`` with ones: p and its k nearest (``near``'s first k + 1 columns)."""
    n = len(near)
    return sparse.csr_matrix((np.ones(n * (k + 1)), (np.repeat(np.arange(n), k + 1), near[:, :k + 1].ravel())),
                             shape=(n, n))


def _reciprocal(near: np.ndarray, k: int) -> sparse.csr_matrix:
    """Row p marks ``R(p, k)``: the members g of ``N(p, k)`` that hold p in ``N(g, k)``."""
    listed = _nearest(near, k)
    return listed.multiply(listed.T).tocsr()


def _distances(x: np.ndarray, rows: np.ndarray, cols: np.ndarray, chunk_size: int) -> np.ndarray:
    """``‖x_r − x_c‖² = 2 − 2 x_r·x_c`` for unit rows, in chunks."""
    out = np.empty(len(rows))
    for start in range(0, len(rows), chunk_size):
        r, c = rows[start:start + chunk_size], cols[start:start + chunk_size]
        out[start:start + len(r)] = 2.0 - 2.0 * np.einsum("ij,ij->i", x[r], x[c])
    return np.clip(out, 0.0, None)
