"""Same-writer and different-writer cosine histograms over all N(N-1)/2 pairs, streamed.

The Gram matrix is computed block by block over its upper triangle only; each block is
quantised into ``bins`` equal bins over [low, high] (first [-1, 1]) and counted with
``torch.bincount``, so memory stays at one block per thread plus the counts while ROC AUC
and EER cover every pair. On the CPU the blocks are shared among torch's threads, each
computing and counting whole blocks on its own (``torch.bincount`` is serial, so splitting
blocks beats splitting each product). The embeddings are first sorted by label: same-label
pairs then form a few rectangles near the diagonal, counted separately, and the
different-label counts are the total minus those.

Binning error: ROC AUC from the histograms counts a same/different couple that shares
a bin as ½, so it differs from the exact AUC by at most ½ Σ_b same_b · diff_b / (P · N)
(P same pairs, N different; :func:`auc_tie_bound` computes it), about ½ · w · ∫ p_same p_diff
for bin width w: below 1e-5 for cosine scores spread over [-1, 1] with the default 2^16 bins
(w = 3.05e-5). EER is exact at bin edges and off by at most the share of pairs in the one
bin where the error rates cross.

Range refinement: features sharing one dominant direction have all their cosines in a
sliver such as [0.999, 1], a few bins of [-1, 1], and the bound above is then large
(∫ p_same p_diff grows as 1 / the sliver's width). So after counting over [low, high], if
the bound exceeds ``tolerance``, the occupied bins b0 … b1 are at most half of them and a bin
is wider than ε = 2^-23 (float32's resolution of the cosine of unit vectors), the pairs are
counted again over [low + b0·w, low + (b1 + 1)·w]. Every score lies in that range, so the
result is still a histogram of every pair, with bins narrower by bins / (b1 - b0 + 1) >= 2;
the bound then comes down to the ties of the float32 cosines themselves, as bins narrower
than ε hold a value or two each: for cosines in [0.999, 1] (~15,000 float32 values) from
~0.02 to ~1e-4, for the fine-tuned MAE ViT of docs/benchmarks.md (cosines in [0.99996, 1],
~1,000 values) from 0.5 to 2e-3; the bound still holds. A pass is made only after one whose
bins were wider than ε, and each at least halves them, so there are at most
1 + ⌈log2(2 / (bins · ε))⌉ passes (9 for 2^16 bins): one for ordinary features, two or three
for degenerate ones; identical scores (every pair in one bin) stop after the second.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from .backend import as_matrix, prepare, torch_device
from .blocks import score_blocks

FLOAT32_EPS = float(np.finfo(np.float32).eps)


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


def auc_tie_bound(same: np.ndarray, diff: np.ndarray) -> float:
    """Largest gap between the ROC AUC of pair counts per level and the AUC of the scores they stand for.

    Pairs at different levels are ordered correctly; a same/different couple at one level
    is counted ½ where the truth is 0, ½ or 1, so the error is at most
    ``½ Σ_l same[l]·diff[l] / (P·N)`` (P same pairs, N different; both must be positive).
    """
    same, diff = np.asarray(same, np.float64), np.asarray(diff, np.float64)
    return float(0.5 * np.dot(same, diff) / (same.sum() * diff.sum()))


def all_pairs_histogram(embeddings: np.ndarray | torch.Tensor, labels: np.ndarray, *, bins: int = 1 << 16,
                        block_size: int = 1024, device: str = "cpu", tolerance: float = 1e-4) -> ScoreHistogram:
    """Histograms of the cosine similarity of every unordered pair ``i < j``, split by ``labels[i] == labels[j]``.

    Counted over [-1, 1], then again over the occupied range while the AUC error bound
    exceeds ``tolerance`` (see the module docstring); the returned histogram's ``low`` and
    ``high`` say which range. With the default 2^16 bins a bin of [-1, 1] is 3.05e-5 wide;
    see :func:`auc_tie_bound` for what that means for the AUC.
    """
    x = as_matrix(embeddings, "embeddings")
    labels = np.asarray(labels)
    if labels.shape != (len(x),):
        raise ValueError(f"labels must have shape ({len(x)},), got {labels.shape}")
    if bins < 2:
        raise ValueError(f"bins={bins} must be >= 2")
    if not tolerance >= 0:
        raise ValueError(f"tolerance={tolerance} must be >= 0")
    if not np.isfinite(x).all():
        raise ValueError("embeddings contain NaN or infinite values")
    order = np.argsort(labels, kind="stable")
    unit = prepare(x[order], "cosine", "embeddings")
    _, starts = np.unique(labels[order], return_index=True)
    bounds = np.append(starts, len(labels))  # class c holds sorted rows bounds[c] .. bounds[c+1]-1
    low, high = -1.0, 1.0
    while True:
        same, total = _count(unit, bounds, low, high, bins, block_size, device)
        hist = ScoreHistogram(same=same, diff=total - same, low=low, high=high)
        narrower = _occupied_range(hist, tolerance)
        if narrower is None:
            return hist
        low, high = narrower


def _occupied_range(hist: ScoreHistogram, tolerance: float) -> tuple[float, float] | None:
    """The edges around the occupied bins when counting again over them is worthwhile, else None."""
    bins = len(hist.same)
    if not hist.same.any() or not hist.diff.any():  # no ROC to make exact
        return None
    if auc_tie_bound(hist.same, hist.diff) <= tolerance:
        return None
    if (hist.high - hist.low) / bins <= FLOAT32_EPS:  # narrower bins would sort float32 rounding noise
        return None
    occupied = np.flatnonzero(hist.same + hist.diff)
    first, last = int(occupied[0]), int(occupied[-1]) + 1
    if 2 * (last - first) > bins:  # shrinking the bins by less than half is not worth a pass
        return None
    edges = hist.edges
    return float(edges[first]), float(edges[last])


def _count(unit: np.ndarray, bounds: np.ndarray, low: float, high: float, bins: int, block_size: int,
           device: str) -> tuple[np.ndarray, np.ndarray]:
    """``(same, total)`` pair counts per bin of [low, high] of the label-sorted unit rows ``unit``.

    A score ``s`` goes to bin ``floor((s - low) · c)``, ``c = bins / (high - low)`` (``s = high``
    into the last bin), and the bin index comes straight out of the matrix product: the
    query side is ``[x · c, -low · c]`` and the reference side ``[x, 1]``, so each product is
    ``(s - low) · c`` and one float-to-int conversion (truncation) gives the bin. Truncation
    is floor for products >= 0 and also sends (-1, 0) to bin 0. In exact arithmetic the
    products of scores in [low, high] lie in [0, bins]; float32 rounds them by a few ε ·
    (|s| + |low|) · c, so a score goes to the bin of a value within a few ε of it, as s itself
    is only known to a few ε. Over [-1, 1] that is a few thousandths of a bin and the products
    stay in range (a score at -1 rounds into (-1, 0)); over a refined range it can be many
    (narrow) bins, so the codes are clamped to [0, bins]: a score at ``low`` or ``high``,
    computed a little outside, stays in the end bin, as do the scores beyond it.
    """
    n = len(unit)
    scale = bins / (high - low)
    ones = np.ones((n, 1), np.float32)
    scaled = np.hstack([unit * np.float32(scale), ones * np.float32(-low * scale)])
    unit = np.hstack([unit, ones])
    clamp = (low, high) != (-1.0, 1.0)
    dev = torch_device(device)
    slots = bins + 2  # the bins, then s = high exactly (folded into the last bin), then "not a pair"
    caller_threads = torch.get_num_threads()
    threads = caller_threads if dev.type == "cpu" else 1

    def count_part(part: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Counts over every ``threads``-th block, each block's products and counts on one thread."""
        total = torch.zeros(slots, dtype=torch.int64, device=dev)
        same = torch.zeros(slots, dtype=torch.int64, device=dev)
        codes = torch.empty(min(block_size, n) ** 2, dtype=torch.int32, device=dev)
        lower = {}  # per diagonal-block size: the mask of pairs j <= i, which are not counted

        def count(products: torch.Tensor, q0: int, r0: int) -> None:
            nq, nr = products.shape
            block = codes[:nq * nr].view(nq, nr)
            block.copy_(products)  # truncation = floor for the products >= 0
            if clamp:
                block.clamp_(0, bins)
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
    return same[:bins], total[:bins]
