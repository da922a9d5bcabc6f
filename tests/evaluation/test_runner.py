"""The runner computes each shared requirement once, names results, and returns JSON-ready values."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from hvkit.evaluation import EvalData, PairSet, evaluate, shared

from .reference import clustered


class Asks:
    """A minimal evaluator asking for ``requires`` (and ``k`` neighbours when given)."""

    def __init__(self, requires: set[str], k: int | None = None, name: str = "asks"):
        self.requires, self.name = frozenset(requires), name
        if k is not None:
            self.knn_k = lambda data: k

    def __call__(self, data, results):
        return {"seen": sorted(results), "k": results["knn"].k if "knn" in results else 0,
                "value": np.float32(0.5), "count": np.int64(3), "flag": np.bool_(True), "list": np.arange(2)}


def counting(monkeypatch, requirement: str) -> list:
    calls = []
    original = shared.REQUIREMENTS[requirement]

    def wrapper(data, evaluators):
        calls.append(len(evaluators))
        return original(data, evaluators)

    monkeypatch.setitem(shared.REQUIREMENTS, requirement, wrapper)
    return calls


def test_each_requirement_is_computed_once_with_the_largest_k(monkeypatch):
    x, labels = clustered(n=120, classes=6)
    knn_calls, cluster_calls = counting(monkeypatch, "knn"), counting(monkeypatch, "clusters")
    evaluators = {"a": Asks({"knn"}, k=3), "b": Asks({"knn", "clusters"}, k=11), "c": Asks({"knn"}, k=5),
                  "d": Asks(set())}
    out = evaluate(evaluators, EvalData(x, labels))
    assert knn_calls == [3] and cluster_calls == [1]
    assert [out[n]["k"] for n in "abcd"] == [11, 11, 11, 0]
    assert out["b"]["seen"] == ["clusters", "knn"] and out["a"]["seen"] == ["knn"] and out["d"]["seen"] == []


def test_k_defaults_to_the_largest_class_size():
    x, labels = clustered(n=120, classes=6)
    out = evaluate([Asks({"knn"})], EvalData(x, labels))
    assert out["asks"]["k"] == np.bincount(labels).max() - 1


def test_results_are_json_ready():
    x, labels = clustered(n=40, classes=4)
    out = evaluate([Asks(set())], EvalData(x, labels))
    assert json.loads(json.dumps(out)) == out
    assert out["asks"]["value"] == 0.5 and type(out["asks"]["value"]) is float
    assert type(out["asks"]["count"]) is int and out["asks"]["flag"] is True and out["asks"]["list"] == [0, 1]


def test_naming_errors_and_unknown_requirements():
    x, labels = clustered(n=40, classes=4)
    data = EvalData(x, labels)
    with pytest.raises(ValueError, match="both named 'asks'.*mapping"):
        evaluate([Asks(set()), Asks(set())], data)
    with pytest.raises(ValueError, match="requires 'gram'.*all_pairs, clusters, knn"):
        evaluate([Asks({"gram"})], data)
    assert set(evaluate({"one": Asks(set()), "two": Asks(set())}, data)) == {"one", "two"}


def test_out_dir_is_created(tmp_path):
    x, labels = clustered(n=40, classes=4)
    evaluate([Asks(set())], EvalData(x, labels, out_dir=tmp_path / "plots" / "eval"))
    assert (tmp_path / "plots" / "eval").is_dir()


@pytest.mark.parametrize("self_retrieval", [True, False])
def test_largest_class_size_is_pml_max_bin_count(self_retrieval):
    x, labels = clustered(n=200, classes=9, seed=3)
    query, q_labels = x[:80], labels[:80]
    data = EvalData(x, labels) if self_retrieval else EvalData(query, q_labels, reference_embeddings=x[80:],
                                                               reference_labels=labels[80:])
    calculator = AccuracyCalculator(k="max_bin_count")
    ref = labels if self_retrieval else labels[80:]
    queries = labels if self_retrieval else q_labels
    counts = torch.tensor([(ref == v).sum() for v in np.unique(queries)])
    assert data.largest_class_size() == calculator.determine_k(counts, len(ref), self_retrieval)


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": np.zeros(3)}, r"labels \(N,\)"),
    ({"reference_embeddings": np.zeros((2, 4))}, "together"),
    ({"reference_embeddings": np.zeros((2, 5)), "reference_labels": np.zeros(2)}, "dimension"),
    ({"metric": "hamming"}, "metric='hamming'"),
    ({"verifiers": {"v": {"val": PairSet([0.1], [True], [0])}}}, "'test'"),
])
def test_eval_data_validation(kwargs, match):
    base = {"embeddings": np.zeros((4, 4)), "labels": np.zeros(4)}
    with pytest.raises(ValueError, match=match):
        EvalData(**{**base, **kwargs})


def test_pair_set_validation():
    with pytest.raises(ValueError, match="equal length"):
        PairSet(np.zeros(3), np.zeros(2, bool), np.zeros(3))
