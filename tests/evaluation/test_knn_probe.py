"""The kNN probe equals scikit-learn's KNeighborsClassifier, and leave-one-out equals a brute-force vote."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import KNeighborsClassifier

from hvkit.evaluation import EvalData, evaluate
from hvkit_plugins.evaluators.knn_probe import KNNProbe

from .reference import clustered


@pytest.mark.parametrize("k", [1, 4, 7])
def test_queries_against_reference_equal_sklearn(k):
    x, labels = clustered(n=400, classes=12, noise=1.5, seed=1)
    query, reference = x[:150], x[150:]
    data = EvalData(query, labels[:150], reference_embeddings=reference, reference_labels=labels[150:], metric="l2")
    out = evaluate([KNNProbe(k=k)], data)["knn_probe"]
    sklearn = KNeighborsClassifier(k, algorithm="brute").fit(reference, labels[150:])
    assert out["accuracy"] == pytest.approx(sklearn.score(query, labels[:150]), abs=1e-12)
    assert out["k"] == k and out["leave_one_out"] is False
    assert 0.2 < out["accuracy"] < 1.0


def test_leave_one_out_equals_a_brute_force_vote():
    x, labels = clustered(n=200, classes=8, noise=1.5, seed=2)
    out = evaluate([KNNProbe(k=5)], EvalData(x, labels))["knn_probe"]
    unit = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    votes = labels[np.argsort(-sim, axis=1)[:, :5]]
    predicted = [np.bincount(v, minlength=labels.max() + 1).argmax() for v in votes]  # ties: smallest label
    assert out["accuracy"] == pytest.approx(np.mean(predicted == labels), abs=1e-12)
    assert out["leave_one_out"] is True


def test_a_tied_vote_goes_to_the_smallest_label():
    x = np.array([[1.0, 0.0], [0.99, 0.14], [0.98, -0.2], [0.0, 1.0]], np.float32)
    reference_labels = np.array([5, 2, 9, 2])
    data = EvalData(x[:1], np.array([2]), reference_embeddings=x, reference_labels=reference_labels)
    assert evaluate([KNNProbe(k=2)], data)["knn_probe"]["accuracy"] == 1.0  # votes 5 and 2 -> 2
    data = EvalData(x[:1], np.array([5]), reference_embeddings=x, reference_labels=reference_labels)
    assert evaluate([KNNProbe(k=2)], data)["knn_probe"]["accuracy"] == 0.0


def test_invalid_k():
    with pytest.raises(ValueError, match="k=0"):
        KNNProbe(k=0)
