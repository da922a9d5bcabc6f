"""Shared results evaluators ask for by name in ``requires``; the runner computes each once.

- ``"knn"``: :class:`Neighbours` of every test embedding, in the reference set or (self-
  retrieval) among the other test embeddings. ``k`` is the largest ``knn_k(data)`` over the
  evaluators that ask (an evaluator without ``knn_k`` gets the largest class size).
- ``"clusters"``: k-means cluster ids of the test embeddings, one cluster per test label.
- ``"all_pairs"``: :class:`hvkit.index.ScoreHistogram` of the cosine similarity of every test
  pair (None with fewer than two test embeddings).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from hvkit.index import ScoreHistogram, all_pairs_histogram, kmeans_assign, knn

from .data import EvalData

ALL_PAIRS_BINS = 1 << 16


@dataclass
class Neighbours:
    """kNN of each test embedding: ``ids`` and ``scores`` are (N, k), most similar first.

    ``ids`` index the gallery (the reference set, or the test set in self-retrieval),
    whose labels are ``gallery_labels``.
    """

    ids: np.ndarray
    scores: np.ndarray
    gallery_labels: np.ndarray
    self_retrieval: bool

    @property
    def k(self) -> int:
        return int(self.ids.shape[1])

    def labels(self, rows: np.ndarray | slice = slice(None), k: int | None = None) -> np.ndarray:
        """Labels of the first ``k`` (default all) neighbours of the queries ``rows``; taken in blocks, no N × k copy is kept."""
        return self.gallery_labels[self.ids[rows, :k]]


def compute_knn(data: EvalData, evaluators: Sequence[Any]) -> Neighbours:
    gallery, gallery_labels = data.gallery()
    wanted = max(ev.knn_k(data) if hasattr(ev, "knn_k") else data.largest_class_size() for ev in evaluators)
    k = min(max(wanted, 1), len(gallery) - int(data.self_retrieval))
    if k < 1:
        raise ValueError("kNN needs at least two test embeddings (or one reference embedding)")
    scores, ids = knn(data.embeddings, k, None if data.self_retrieval else gallery,
                      metric=data.metric, device=data.device)
    return Neighbours(ids=ids, scores=scores, gallery_labels=np.asarray(gallery_labels),
                      self_retrieval=data.self_retrieval)


def compute_clusters(data: EvalData, evaluators: Sequence[Any]) -> np.ndarray:
    x = data.embeddings
    if data.metric == "cosine":
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return kmeans_assign(x, len(np.unique(data.labels)))


def compute_all_pairs(data: EvalData, evaluators: Sequence[Any]) -> ScoreHistogram | None:
    if len(data.embeddings) < 2:
        return None
    return all_pairs_histogram(data.embeddings, data.labels, bins=ALL_PAIRS_BINS, device=data.device)


REQUIREMENTS: dict[str, Callable[[EvalData, Sequence[Any]], Any]] = {
    "knn": compute_knn,
    "clusters": compute_clusters,
    "all_pairs": compute_all_pairs,
}
"""Requirement name -> ``fn(data, evaluators_that_ask) -> shared value``."""
