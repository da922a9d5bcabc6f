"""Retrieval metrics with pytorch-metric-learning's AccuracyCalculator definitions, streamed."""

from __future__ import annotations

from typing import Any

import numpy as np
from hvkit.evaluation import EvalData

BLOCK_CELLS = 1 << 22  # queries × k handled at once


class Retrieval:
    """Retrieval: precision@1, recall@K, R-precision, MAP@R, NMI and AMI (PML's definitions).

    For a query with label y, R is the number of gallery items labelled y (itself excluded
    in self-retrieval); queries with R = 0 are left out, as PML does. With the kNN labels
    ranked by similarity and ``rel_j`` = [label of neighbour j = y]:
    precision@1 = rel_1; recall@K = [any rel_j, j ≤ K]; R-precision = Σ_{j≤R} rel_j / R;
    MAP@R = (1/R) Σ_{j≤R} rel_j · P@j (Musgrave et al., "A Metric Learning Reality Check",
    ECCV 2020). NMI and AMI (scikit-learn) compare the test labels with k-means clusters,
    one per label. k defaults to the largest class size, enough for R-precision and
    MAP@R, and the metrics are accumulated over blocks of queries, never an N × N matrix.
    Defaults: recall_at [1, 2, 4, 8], clustering on.
    """

    name = "retrieval"

    def __init__(self, recall_at: list[int] = [1, 2, 4, 8], clustering: bool = True):
        if not recall_at or min(recall_at) < 1:
            raise ValueError(f"recall_at={recall_at} must be a non-empty list of positive ranks")
        self.recall_at = sorted(set(int(k) for k in recall_at))
        self.clustering = clustering
        self.requires = frozenset({"knn", "clusters"} if clustering else {"knn"})

    def knn_k(self, data: EvalData) -> int:
        return max(data.largest_class_size(), self.recall_at[-1])

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        neighbours = shared["knn"]
        labels = data.labels
        gallery_labels = data.gallery()[1]
        values, counts = np.unique(gallery_labels, return_counts=True)
        position = np.searchsorted(values, labels).clip(max=len(values) - 1)
        r = np.where(values[position] == labels, counts[position], 0) - int(neighbours.self_retrieval)
        queries = np.flatnonzero(r > 0)
        sums = dict.fromkeys(["precision_at_1", "r_precision", "map_at_r",
                              *(f"recall_at_{k}" for k in self.recall_at)], 0.0)
        step = max(1, BLOCK_CELLS // neighbours.k)
        for start in range(0, len(queries), step):
            rows = queries[start:start + step]
            relevant = neighbours.labels(rows) == labels[rows, None]
            r_rows = r[rows]
            within_r = np.arange(relevant.shape[1])[None, :] < r_rows[:, None]
            hits = relevant & within_r
            sums["precision_at_1"] += relevant[:, 0].sum()
            for k in self.recall_at:
                sums[f"recall_at_{k}"] += relevant[:, :k].any(axis=1).sum()
            # PML divides R-precision by the number of relevance slots within k, MAP@R by R
            sums["r_precision"] += np.sum(hits.sum(axis=1) / within_r.sum(axis=1))
            precision_at_j = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
            sums["map_at_r"] += np.sum((precision_at_j * hits).sum(axis=1) / r_rows)
        out: dict[str, Any] = {key: (s / len(queries) if len(queries) else float("nan")) for key, s in sums.items()}
        out["queries"] = len(queries)
        out["k"] = neighbours.k
        if self.clustering:
            from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
            out["nmi"] = normalized_mutual_info_score(labels, shared["clusters"])
            out["ami"] = adjusted_mutual_info_score(labels, shared["clusters"])
        return out
