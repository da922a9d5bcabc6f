"""The linear probe equals the scikit-learn pipeline it describes, and refuses impossible setups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hvkit.evaluation import EvalData, evaluate
from hvkit_plugins.evaluators.linear_probe import LinearProbe, writer_split

from .reference import clustered


@pytest.mark.parametrize("train_on", ["reference", "val"])
def test_accuracy_equals_direct_sklearn(train_on):
    x, labels = clustered(n=400, dim=8, classes=6, noise=2.0, seed=1)
    test, train = x[:150], x[150:]
    data = EvalData(test, labels[:150], metric="l2", **{f"{train_on}_embeddings": train,
                                                       f"{train_on}_labels": labels[150:]})
    out = evaluate([LinearProbe(train_on=train_on, c=0.5)], data)["linear_probe"]
    scaler = StandardScaler().fit(train)
    model = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(train), labels[150:])
    expected = np.mean(model.predict(scaler.transform(test)) == labels[:150])
    assert out["accuracy"] == pytest.approx(expected, abs=1e-12)
    assert (out["split"], out["train_size"], out["classes"]) == (False, 250, 6)
    assert 0.3 < out["accuracy"] < 1.0


def test_shuffled_training_labels_lose_accuracy():
    x, labels = clustered(n=400, dim=8, classes=4, noise=0.3, seed=2)
    good = EvalData(x[:100], labels[:100], reference_embeddings=x[100:], reference_labels=labels[100:])
    bad = EvalData(x[:100], labels[:100], reference_embeddings=x[100:],
                   reference_labels=np.random.default_rng(0).permutation(labels[100:]))
    assert evaluate([LinearProbe()], good)["linear_probe"]["accuracy"] == 1.0
    assert evaluate([LinearProbe()], bad)["linear_probe"]["accuracy"] < 0.6


def test_errors():
    x, labels = clustered(n=60, classes=3)
    with pytest.raises(ValueError, match="no reference_embeddings"):
        evaluate([LinearProbe(train_on="reference")], EvalData(x, labels))
    with pytest.raises(ValueError, match="absent from the val set"):
        evaluate([LinearProbe(train_on="val")], EvalData(x, labels, val_embeddings=x, val_labels=labels + 10))
    with pytest.raises(ValueError, match="fewer than 2 writers"):
        evaluate([LinearProbe()], EvalData(x[:5], np.zeros(5), reference_embeddings=x, reference_labels=np.zeros(60)))
    with pytest.raises(ValueError, match="train_on"):
        LinearProbe(train_on="test")
    with pytest.raises(ValueError, match="train_fraction=1"):
        LinearProbe(train_fraction=1)
    with pytest.raises(ValueError, match="1 test writer"):  # one writer with two images, one with one
        evaluate([LinearProbe(train_on="split")], EvalData(x[:3], np.array([0, 0, 1])))
    assert evaluate([LinearProbe()], EvalData(x[:3], np.array([0, 0, 1])))["linear_probe"] == {
        "skipped": True, "writers_with_two_images": 1}  # the default goes on
    with pytest.raises(ValueError, match="c=0"):
        LinearProbe(c=0)


def test_the_writer_split_gives_each_writer_s_share_to_training():
    labels = np.array([5, 5, 5, 5, 7, 9, 9, 9, 5, 9, 9])  # writer 5: 5 images, 7: one, 9: 5
    train, test = writer_split(labels, 0.5, seed=3)
    assert np.intersect1d(train, test).size == 0 and 4 not in np.concatenate([train, test])  # writer 7 left out
    assert sorted(labels[train].tolist()) == [5, 5, 9, 9] and sorted(labels[test].tolist()) == [5, 5, 5, 9, 9, 9]
    assert [labels[writer_split(labels, f, 0)[0]].tolist().count(5) for f in (0.05, 0.5, 0.7, 0.95)] == [1, 2, 4, 4]
    again = writer_split(labels, 0.5, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, test)))
    assert any(not np.array_equal(writer_split(labels, 0.5, seed)[0], train) for seed in range(4, 10))


def test_split_is_closed_set_identification_among_the_test_writers():
    """Without a reference set the probe trains on part of each test writer's images and tests the rest: the
    accuracy equals scikit-learn's on that split, and the probe is better than chance."""
    x, labels = clustered(n=300, dim=8, classes=10, noise=1.5, seed=4)
    data = EvalData(x, labels, metric="l2")
    out = evaluate([LinearProbe(train_fraction=0.4, seed=2, c=0.5)], data)["linear_probe"]
    train, test = writer_split(labels, 0.4, 2)
    scaler = StandardScaler().fit(x[train])
    model = LogisticRegression(C=0.5, max_iter=1000).fit(scaler.transform(x[train]), labels[train])
    expected = np.mean(model.predict(scaler.transform(x[test])) == labels[test])
    assert out["accuracy"] == pytest.approx(expected, abs=1e-12) and out["accuracy"] > 0.5
    assert (out["split"], out["train_size"], out["test_size"], out["classes"]) == (True, len(train), len(test), 10)
    assert len(train) + len(test) == 300
    with_reference = EvalData(x[:100], labels[:100], reference_embeddings=x[100:], reference_labels=labels[100:])
    assert evaluate([LinearProbe()], with_reference)["linear_probe"] == \
        evaluate([LinearProbe(train_on="reference")], with_reference)["linear_probe"]
