"""The retrieval evaluator equals pytorch-metric-learning's AccuracyCalculator; recall@K, hard top-k and full mAP by
definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from sklearn.metrics import average_precision_score

from hvkit.evaluation import EvalData, evaluate
from hvkit.index.rerank import k_reciprocal_scores
from hvkit_plugins.evaluators.retrieval import Rerank, Retrieval
from hvkit_plugins.stages.evaluate import verification_report

from .reference import clustered

PML_NAMES = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
             "map_at_r": "mean_average_precision_at_r", "nmi": "NMI", "ami": "AMI"}


def pml(query, query_labels, reference=None, reference_labels=None) -> dict[str, float]:
    calculator = AccuracyCalculator(include=tuple(PML_NAMES.values()), k="max_bin_count",
                                    device=torch.device("cpu"))
    return calculator.get_accuracy(query, query_labels, reference, reference_labels, ref_includes_query=False)


def unit(x: np.ndarray) -> np.ndarray:
    return torch.nn.functional.normalize(torch.from_numpy(x), dim=1).numpy()


@pytest.mark.parametrize("metric", ["l2", "cosine"])
@pytest.mark.parametrize("seed", [0, 1])
def test_self_retrieval_equals_pml(metric, seed):
    x, labels = clustered(n=500, classes=15, noise=1.3, seed=seed)
    labels[0] = 99  # a writer with one sample: left out of the kNN metrics, as PML does
    x = unit(x) if metric == "cosine" else x
    ours = evaluate([Retrieval()], EvalData(x, labels, metric=metric))["retrieval"]
    expected = pml(x, labels)
    for name, pml_name in PML_NAMES.items():
        assert ours[name] == pytest.approx(expected[pml_name], abs=1e-6), name
    assert ours["queries"] == len(x) - 1
    assert 0.1 < ours["map_at_r"] < 0.95, "neither trivial nor hopeless data"


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_queries_against_reference_equal_pml(metric):
    x, labels = clustered(n=600, classes=15, noise=1.3, seed=2)
    query, q_labels, reference, r_labels = x[:200], labels[:200].copy(), x[200:], labels[200:]
    q_labels[:3] = 77  # a writer absent from the reference set
    if metric == "cosine":
        query, reference = unit(query), unit(reference)
    data = EvalData(query, q_labels, reference_embeddings=reference, reference_labels=r_labels, metric=metric)
    ours = evaluate([Retrieval()], data)["retrieval"]
    expected = pml(query, q_labels, reference, r_labels)
    for name, pml_name in PML_NAMES.items():
        assert ours[name] == pytest.approx(expected[pml_name], abs=1e-6), name
    assert ours["queries"] == 197


def test_recall_at_k_by_definition():
    x, labels = clustered(n=300, classes=10, noise=1.5, seed=4)
    ours = evaluate([Retrieval(recall_at=[1, 3, 10], clustering=False)], EvalData(x, labels))["retrieval"]
    unit64 = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit64 @ unit64.T
    np.fill_diagonal(sim, -np.inf)
    ranked = labels[np.argsort(-sim, axis=1)]
    for k in (1, 3, 10):
        assert ours[f"recall_at_{k}"] == pytest.approx(np.mean((ranked[:, :k] == labels[:, None]).any(1)), abs=1e-12)
    assert "nmi" not in ours


def test_hard_top_k_and_full_map_by_definition():
    x, labels = clustered(n=300, classes=10, noise=1.5, seed=6)
    labels[:2] = [50, 51]  # two lone writers: no query
    ours = evaluate([Retrieval(hard_at=[1, 2, 5], full_map=True, clustering=False)],
                    EvalData(x, labels))["retrieval"]
    unit64 = x.astype(np.float64) / np.linalg.norm(x, axis=1, keepdims=True)
    sim = unit64 @ unit64.T
    np.fill_diagonal(sim, -np.inf)
    queries = np.flatnonzero(np.bincount(labels)[labels] > 1)
    ranked = labels[np.argsort(-sim, axis=1)][queries, :-1]  # the query itself, at -inf, last
    relevant = ranked == labels[queries, None]
    for k in (1, 2, 5):
        assert ours[f"hard_at_{k}"] == pytest.approx(np.mean(relevant[:, :k].all(axis=1)), abs=1e-12)
    expected = np.mean([average_precision_score(labels[queries[q]] == np.delete(labels, queries[q]),
                                                np.delete(sim[queries[q]], queries[q])) for q in range(len(queries))])
    assert ours["map"] == pytest.approx(expected, abs=1e-9) and ours["map"] > ours["hard_at_5"]
    assert ours["hard_at_1"] == ours["precision_at_1"] and ours["k"] == len(x) - 1
    assert "map" not in evaluate([Retrieval(clustering=False)], EvalData(x, labels))["retrieval"]
    assert (f"MAP@R {ours['map_at_r']:.4f}, hard top-1 {ours['hard_at_1']:.4f}, hard top-2 {ours['hard_at_2']:.4f}, "
            f"hard top-5 {ours['hard_at_5']:.4f}, mAP {ours['map']:.4f}.") in verification_report({"retrieval": ours},
                                                                                              "clean")


def test_k_covers_the_largest_class_and_the_largest_recall_rank():
    x, labels = clustered(n=100, classes=5, seed=5)
    data = EvalData(x, labels)
    assert Retrieval().knn_k(data) == np.bincount(labels).max() - 1
    assert Retrieval(recall_at=[1, 90]).knn_k(data) == 90


def test_all_queries_lone_gives_nan():
    x, _ = clustered(n=20, classes=4)
    ours = evaluate([Retrieval(clustering=False)], EvalData(x, np.arange(20)))["retrieval"]
    assert ours["queries"] == 0 and np.isnan(ours["precision_at_1"])


@pytest.mark.parametrize("recall_at", [[], [0, 1]])
def test_invalid_recall_ranks(recall_at):
    with pytest.raises(ValueError, match="recall_at"):
        Retrieval(recall_at=recall_at)
    with pytest.raises(ValueError, match="hard_at"):
        Retrieval(hard_at=[0])
    with pytest.raises(ValueError, match="full_map ranks every gallery item, rerank only a pool"):
        Retrieval(full_map=True, rerank=Rerank(pool=10))


def test_reranked_retrieval_ranks_by_the_re_ranked_scores():
    """With the whole set as the pool, the metrics are PML's definitions on the ranking by k-reciprocal scores."""
    x, labels = clustered(n=240, classes=12, noise=1.4, seed=6)
    n = len(x)
    rerank = Rerank(pool=n - 1, k1=10, k2=4, weight=0.2)
    ours = evaluate([Retrieval(recall_at=[1, 4], clustering=False, rerank=rerank)], EvalData(x, labels))["retrieval"]
    q, g = np.nonzero(~np.eye(n, dtype=bool))
    scores = np.full((n, n), -np.inf)
    scores[q, g] = k_reciprocal_scores(x, np.stack([q, g], 1), k1=10, k2=4, weight=0.2)
    relevant = labels[np.argsort(-scores, axis=1, kind="stable")] == labels[:, None]
    r = np.bincount(labels)[labels] - 1
    hits = relevant & (np.arange(n)[None, :] < r[:, None])
    map_at_r = np.mean((np.cumsum(hits, axis=1) / np.arange(1, n + 1) * hits).sum(axis=1) / r)
    assert ours["precision_at_1"] == pytest.approx(relevant[:, 0].mean(), abs=1e-12)
    assert ours["recall_at_4"] == pytest.approx(relevant[:, :4].any(axis=1).mean(), abs=1e-12)
    assert ours["r_precision"] == pytest.approx(np.mean(hits.sum(axis=1) / r), abs=1e-12)
    assert ours["map_at_r"] == pytest.approx(map_at_r, abs=1e-12)
    assert ours["rerank"] == {"pool": n - 1, "k1": 10, "k2": 4, "weight": 0.2}
    plain = evaluate([Retrieval(recall_at=[1, 4], clustering=False)], EvalData(x, labels))["retrieval"]
    assert ours["map_at_r"] > plain["map_at_r"] + 0.02  # neighbourhoods help on noisy clusters
    assert Retrieval(rerank=Rerank(pool=150)).knn_k(EvalData(x, labels)) == 150


def test_reranking_refuses_a_reference_set_another_metric_and_a_negative_pool():
    x, labels = clustered(n=100, classes=5, seed=7)
    retrieval = Retrieval(clustering=False, rerank=Rerank(pool=50))
    with pytest.raises(ValueError, match="this evaluation searches a reference set"):
        evaluate([retrieval], EvalData(x[:50], labels[:50], reference_embeddings=x[50:], reference_labels=labels[50:]))
    with pytest.raises(ValueError, match="this evaluation's metric is 'l2'"):
        evaluate([retrieval], EvalData(x, labels, metric="l2"))
    with pytest.raises(ValueError, match="rerank.pool=-1"):
        Rerank(pool=-1)
    with pytest.raises(ValueError, match="rerank: weight=2"):
        Rerank(weight=2)
