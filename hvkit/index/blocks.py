"""The blocked query × reference primitive: every block of scores handed to a callback.

This is pytorch-metric-learning's ``BatchedDistance`` idea: memory is one block
(``block_size``² floats), whatever the number of embeddings, so kNN, all-pairs histograms
and any other streaming statistic are built on it.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .backend import prepare_tensors, torch_device

BlockFn = Callable[[torch.Tensor, int, int], None]


def score_blocks(query: np.ndarray | torch.Tensor, fn: BlockFn,
                 reference: np.ndarray | torch.Tensor | None = None, *, metric: str = "cosine",
                 block_size: int = 2048, device: str = "cpu", upper_triangle: bool = False,
                 part: tuple[int, int] = (0, 1)) -> None:
    """Call ``fn(scores, q0, r0)`` for every block of query × reference similarities.

    ``scores[a, b]`` is the similarity of ``query[q0 + a]`` and ``reference[r0 + b]``
    (see :mod:`hvkit.index.backend` for the metrics); it is a float32 tensor on ``device``
    whose memory is reused, so ``fn`` must copy what it keeps. Without ``reference`` the
    query is compared with itself. ``upper_triangle=True`` visits only blocks with
    ``r0 >= q0`` (diagonal blocks whole): every unordered pair once, half the work; it is
    for a query compared with itself, or with a reference whose row i is the same item
    as query row i (e.g. a rescaled copy). ``part=(i, n)`` visits only every n-th block,
    starting with the i-th, so that n threads can share the blocks.
    """
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1")
    if upper_triangle and reference is not None and len(reference) != len(query):
        raise ValueError("upper_triangle=True needs the reference rows to be the query's items: "
                         f"got {len(query)} query and {len(reference)} reference rows")
    q, r = prepare_tensors(query, reference, metric, device, ("queries", "reference"))
    dev = q.device
    if metric == "l2":
        q_sq, r_sq = (q * q).sum(1), (r * r).sum(1)
    if not 0 <= part[0] < part[1]:
        raise ValueError(f"part={part} must be (i, n) with 0 <= i < n")
    buffer = torch.empty(min(block_size, len(q)) * min(block_size, len(r)), device=dev)
    ordinal = -1
    for q0 in range(0, len(q), block_size):
        q1 = min(q0 + block_size, len(q))
        for r0 in range(q0 if upper_triangle else 0, len(r), block_size):
            ordinal += 1
            if ordinal % part[1] != part[0]:
                continue
            r1 = min(r0 + block_size, len(r))
            out = buffer[:(q1 - q0) * (r1 - r0)].view(q1 - q0, r1 - r0)
            if metric == "l2":
                torch.addmm(r_sq[None, r0:r1], q[q0:q1], r[r0:r1].T, beta=-1, alpha=2, out=out)
                out.sub_(q_sq[q0:q1, None]).clamp_(max=0.0)  # rounding can make a distance negative
            else:
                torch.mm(q[q0:q1], r[r0:r1].T, out=out)
            fn(out, q0, r0)


def blocked_topk(query: np.ndarray | torch.Tensor, k: int, reference: np.ndarray | torch.Tensor, *,
                 metric: str = "cosine", block_size: int = 2048,
                 device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` most similar reference rows of every query row, by blocked products and ``torch.topk``.

    Returns ``(scores, indices)``, each (Nq, k), best first. The FAISS-free exact search.
    """
    dev = torch_device(device)
    nq = len(query)
    best = torch.full((nq, k), -torch.inf, device=dev)
    ids = torch.full((nq, k), -1, dtype=torch.int64, device=dev)

    def merge(scores: torch.Tensor, q0: int, r0: int) -> None:
        q1 = q0 + scores.shape[0]
        values, pos = torch.topk(torch.cat([best[q0:q1], scores], dim=1), k, dim=1)
        from_old = pos < k
        old = ids[q0:q1].gather(1, pos.clamp(max=k - 1))
        ids[q0:q1] = torch.where(from_old, old, pos - k + r0)
        best[q0:q1] = values

    score_blocks(query, merge, reference, metric=metric, block_size=block_size, device=device)
    return best.cpu().numpy(), ids.cpu().numpy()
