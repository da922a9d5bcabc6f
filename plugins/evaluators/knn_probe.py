"""kNN probe: how well a nearest-neighbour vote recovers writers from frozen embeddings."""

from __future__ import annotations

from typing import Any

import numpy as np

from hvkit.evaluation import EvalData

VOTE_CELLS = 1 << 24  # rows × classes counted at once


class KNNProbe:
    """kNN probe: accuracy of a k-nearest-neighbour majority vote over writer labels.

    Each test embedding takes the most frequent label among its ``k`` (default 5) most
    similar gallery embeddings — the reference set when given, else the other test
    embeddings (leave-one-out); ties go to the smallest label, as scikit-learn's
    ``KNeighborsClassifier`` does.
    """

    name = "knn_probe"
    requires = frozenset({"knn"})

    def __init__(self, k: int = 5):
        if k < 1:
            raise ValueError(f"k={k} must be >= 1")
        self.k = k

    def knn_k(self, data: EvalData) -> int:
        return self.k

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        neighbours = shared["knn"]
        k = min(self.k, neighbours.k)
        classes, codes = np.unique(neighbours.labels(k=k), return_inverse=True)
        codes = codes.reshape(len(neighbours.ids), k)
        predicted = np.empty(len(codes), dtype=np.int64)
        rows_at_once = max(1, VOTE_CELLS // len(classes))
        for start in range(0, len(codes), rows_at_once):
            block = codes[start:start + rows_at_once]
            cells = np.arange(len(block))[:, None] * len(classes) + block
            votes = np.bincount(cells.ravel(), minlength=len(block) * len(classes)).reshape(len(block), -1)
            predicted[start:start + len(block)] = votes.argmax(axis=1)
        return {"accuracy": float(np.mean(classes[predicted] == data.labels)), "k": k,
                "leave_one_out": neighbours.self_retrieval}
