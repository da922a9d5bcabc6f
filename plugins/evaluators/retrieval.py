"""Retrieval metrics with pytorch-metric-learning's AccuracyCalculator definitions, streamed."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from hvkit.evaluation import EvalData
from hvkit.evaluation.shared import Neighbours
from hvkit.index.rerank import check_settings, k_reciprocal_scores

BLOCK_CELLS = 1 << 22  # queries × k handled at once


@dataclass
class Rerank:
    """k-reciprocal re-ranking of each query's ``pool`` nearest test images (0: off).

    The candidates are re-ordered by the re-ranked score of :func:`~hvkit.index.rerank.k_reciprocal_scores`
    (``k1``, ``k2``, ``weight``; the paper's defaults) within the test set; images beyond the pool
    stay unretrieved, so ``pool`` should exceed the largest class.
    """

    pool: int = 0
    k1: int = 20
    k2: int = 6
    weight: float = 0.3

    def __post_init__(self) -> None:
        if self.pool < 0:
            raise ValueError(f"rerank.pool={self.pool} must be >= 0 (0: no re-ranking)")
        check_settings(self.k1, self.k2, self.weight, "rerank")


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
    ``rerank: {pool: 100}`` ranks self-retrieval by cosine through k-reciprocal re-ranking
    (:class:`Rerank`; Jordan et al. 2020 for writer retrieval), a transductive ranking: each
    query's order then depends on every test image. Defaults: recall_at [1, 2, 4, 8], clustering
    on, no re-ranking.

    The writer-retrieval competitions (ICDAR 2013-2019; Christlein et al.) report two more:
    ``hard_at`` k, the share of queries whose k nearest are *all* the query's writer (the "hard
    criterion"; a query whose writer has fewer than k other images fails it), and with ``full_map``
    the mean average precision over the whole ranking, (1/R) Σ_j rel_j · P@j for every j — which
    ranks every gallery item for every query (N² entries: for test sets up to tens of thousands).
    """

    name = "retrieval"

    def __init__(self, recall_at: list[int] = [1, 2, 4, 8], clustering: bool = True, rerank: Rerank = Rerank(),
                 hard_at: list[int] = [2, 3], full_map: bool = False):
        if not recall_at or min(recall_at) < 1:
            raise ValueError(f"recall_at={recall_at} must be a non-empty list of positive ranks")
        if any(k < 1 for k in hard_at):
            raise ValueError(f"hard_at={hard_at} must be positive ranks")
        if full_map and rerank.pool:
            raise ValueError("full_map ranks every gallery item, rerank only a pool of them: use one of the two")
        self.recall_at = sorted(set(int(k) for k in recall_at))
        self.hard_at = sorted(set(int(k) for k in hard_at))
        self.full_map = full_map
        self.clustering = clustering
        self.rerank = rerank
        self.requires = frozenset({"knn", "clusters"} if clustering else {"knn"})

    def knn_k(self, data: EvalData) -> int:
        if self.full_map:
            return len(data.gallery()[1]) - int(data.self_retrieval)
        return max(data.largest_class_size(), self.recall_at[-1], *self.hard_at, self.rerank.pool)

    def _reranked(self, data: EvalData, neighbours: Neighbours) -> Neighbours:
        """The first ``max(largest class, recall_at)`` of each query's pool, in re-ranked order."""
        if not neighbours.self_retrieval:
            raise ValueError("retrieval: rerank re-orders self-retrieval among the test embeddings; this "
                             "evaluation searches a reference set")
        if data.metric != "cosine":
            raise ValueError(f"retrieval: rerank compares embeddings by cosine; this evaluation's metric is "
                             f"{data.metric!r}")
        queries, pool = neighbours.ids.shape
        pairs = np.stack([np.repeat(np.arange(queries), pool), neighbours.ids.ravel()], axis=1)
        scores = k_reciprocal_scores(data.embeddings, pairs, k1=self.rerank.k1, k2=self.rerank.k2,
                                     weight=self.rerank.weight, device=data.device).reshape(queries, pool)
        keep = min(pool, max(data.largest_class_size(), self.recall_at[-1]))
        order = np.argsort(-scores, axis=1, kind="stable")[:, :keep]
        return Neighbours(ids=np.take_along_axis(neighbours.ids, order, axis=1),
                          scores=np.take_along_axis(scores, order, axis=1),
                          gallery_labels=neighbours.gallery_labels, self_retrieval=True)

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        neighbours = shared["knn"]
        if self.rerank.pool:
            neighbours = self._reranked(data, neighbours)
        labels = data.labels
        gallery_labels = data.gallery()[1]
        values, counts = np.unique(gallery_labels, return_counts=True)
        position = np.searchsorted(values, labels).clip(max=len(values) - 1)
        r = np.where(values[position] == labels, counts[position], 0) - int(neighbours.self_retrieval)
        queries = np.flatnonzero(r > 0)
        sums = dict.fromkeys(["precision_at_1", "r_precision", "map_at_r", *(["map"] if self.full_map else []),
                              *(f"recall_at_{k}" for k in self.recall_at),
                              *(f"hard_at_{k}" for k in self.hard_at)], 0.0)
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
            for k in self.hard_at:
                sums[f"hard_at_{k}"] += relevant[:, :k].all(axis=1).sum() if k <= relevant.shape[1] else 0
            # PML divides R-precision by the number of relevance slots within k, MAP@R by R
            sums["r_precision"] += np.sum(hits.sum(axis=1) / within_r.sum(axis=1))
            precision_at_j = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
            sums["map_at_r"] += np.sum((precision_at_j * hits).sum(axis=1) / r_rows)
            if self.full_map:
                precision_all = np.cumsum(relevant, axis=1) / np.arange(1, relevant.shape[1] + 1)
                sums["map"] += np.sum((precision_all * relevant).sum(axis=1) / r_rows)
        out: dict[str, Any] = {key: (s / len(queries) if len(queries) else float("nan")) for key, s in sums.items()}
        out["queries"] = len(queries)
        out["k"] = neighbours.k
        if self.rerank.pool:
            out["rerank"] = asdict(self.rerank)
        if self.clustering:
            from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score
            out["nmi"] = normalized_mutual_info_score(labels, shared["clusters"])
            out["ami"] = adjusted_mutual_info_score(labels, shared["clusters"])
        return out
