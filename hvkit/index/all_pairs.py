"""Same-writer and different-writer cosine histograms over all N(N-1)/2 pairs, streamed.

The Gram matrix is computed block by block over its upper triangle only; each block is
quantised into ``bins`` equal bins over [-1, 1] and counted with ``torch.bincount``, so
memory stays at one block per thread plus the counts while ROC AUC and EER cover every
pair. On the CPU the blocks are shared among torch's threads, each computing and counting
whole blocks on its own (``torch.bincount`` is serial, so splitting blocks beats splitting
each product). The
embeddings are first sorted by label: same-label pairs then form a few rectangles near
the diagonal, counted separately, and the different-label counts are the total minus
those.

Binning error: ROC AUC from the histograms counts a same/different couple that shares
a bin as ½, so it differs from the exact AUC by at most ½ Σ_b same_b · diff_b / (P · N)
(P same pairs, N different; :meth:`hvkit.evaluation.RocCounts.auc_error_bound` computes
it), about ½ · w · ∫ p_same p_diff for bin width w: below 1e-5 for cosine scores with the
default 2^16 bins (w = 3.05e-5). EER is exact at bin edges and off by at most the share
of pairs in the one bin where the error rates cross.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .backend import as_matrix, prepare, torch_device
from .blocks import score_blocks


@dataclass
class ScoreHistogram:
    """Pair counts per score bin: bin ``b`` covers ``[low + b·w, low + (b+1)·w)``, ``w = (high - low) / bins``."""

    same: np.ndarray
    diff: np.ndarray
    low: float = -1.0
    high: float = 1.0

    @property
    def edges(self) -> np.ndarray:
        """The ``bins + 1`` bin edges."""
        return np.linspace(self.low, self.high, len(self.same) + 1)


def all_pairs_histogram(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, *, bins: int = 1 << 16,
                        block_size: int = 1024, device: str = "cpu") -> ScoreHistogram:
    """Histograms of the cosine similarity of every unordered pair ``i < j``, split by ``labels[i] == labels[j]``.

    A score ``s`` goes to bin ``floor((s + 1) · bins / 2)`` (1.0 into the last bin). With
    the default 2^16 bins a bin is 3.05e-5 wide; see
    :meth:`hvkit.evaluation.roc.RocCounts.auc_error_bound` for what that means for the AUC.
    The bin index comes straight out of the matrix product: the query side is
    ``[x · bins/2, bins/2]`` and the reference side ``[x, 1]``, so each product is
    ``(s + 1) · bins/2`` and one float-to-int conversion (truncation) gives the bin.
    """
    x = as_matrix(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {labels.shape}")
    if bins < 2:
        raise ValueError(f"bins={bins} must be >= 2")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    order = np.argsort(labels, kind="stable")
    unit = prepare(x[order], "cosine", "embeddings")
    _, starts = np.unique(labels[order], return_index=True)
    bounds = np.append(starts, len(labels))  # class c holds sorted rows bounds[c] .. bounds[c+1]-1
    half = bins / 2.0
    ones = np.ones((len(unit), 1), np.float32)
    scaled = np.hstack([unit * np.float32(half), ones * np.float32(half)])
    unit = np.hstack([unit, ones])
    dev = torch_device(device)
    slots = bins + 2  # the bins, then s = 1.0 exactly (folded into the last bin), then "not a pair"
    caller_threads = torch.get_num_threads()
    threads = caller_threads if dev.type == "cpu" else 1

    def count_part(part: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts over every ``threads``-th block, each block's products and counts on one thread."""
        total = torch.zeros(slots, dtype=torch.int64, device=dev)
        same = torch.zeros(slots, dtype=torch.int64, device=dev)
        codes = torch.empty(min(block_size, len(x)) ** 2, dtype=torch.int32, device=dev)
        lower = {}  # per diagonal-block size: the mask of pairs j <= i, which are not counted

        def count(products: torch.Tensor, q0: int, r0: int) -> None:
            nq, nr = products.shape
            block = codes[:nq * nr].view(nq, nr)
            block.copy_(products)  # truncation = floor, as the products are >= 0 (up to rounding at s = -1)
            if q0 == r0:
                if nq not in lower:
                    lower[nq] = torch.ones(nq, nq, dtype=torch.bool, device=dev).tril()
                block.masked_fill_(lower[nq], slots - 1)
            total.add_(torch.bincount(block.view(-1), minlength=slots))
            first = np.searchsorted(bounds, max(q0, r0), side="right") - 1
            last = np.searchsorted(bounds, min(q0 + nq, r0 + nr), side="left")
            for c in range(first, last):  # same-label rectangles meeting this block
                a0, a1 = max(bounds[c], q0), min(bounds[c + 1], q0 + nq)
                b0, b1 = max(bounds[c], r0), min(bounds[c + 1], r0 + nr)
                if a0 < a1 and b0 < b1:
                    counts = torch.bincount(block[a0 - q0:a1 - q0, b0 - r0:b1 - r0].reshape(-1))
                    same[:len(counts)].add_(counts)

        if threads > 1:
            torch.set_num_threads(1)  # this worker's products run on its own thread
        score_blocks(scaled, count, unit, metric="ip", block_size=block_size, device=device,
                     upper_triangle=True, part=(part, threads))
        return total, same

    try:
        with ThreadPoolExecutor(threads) as pool:
            parts = list(pool.map(count_part, range(threads)))
    finally:  # torch.set_num_threads is process-wide: put the caller's count back once every worker is done
        torch.set_num_threads(caller_threads)
    total, same = sum(p[0] for p in parts), sum(p[1] for p in parts)
    total, same = total.cpu().numpy(), same.cpu().numpy()
    total[bins - 1] += total[bins]
    same[bins - 1] += same[bins]
    return ScoreHistogram(same=same[:bins], diff=total[:bins] - same[:bins])
