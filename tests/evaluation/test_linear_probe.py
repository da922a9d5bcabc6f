"""The linear probe equals the scikit-learn pipeline it describes, and refuses impossible setups."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from hvkit.evaluation import EvalData, evaluate
from hvkit_plugins.evaluators.linear_probe import LinearProbe

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
    assert (out["train_size"], out["classes"]) == (250, 6)
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
        evaluate([LinearProbe()], EvalData(x, labels))
    with pytest.raises(ValueError, match="absent from the val set"):
        evaluate([LinearProbe(train_on="val")], EvalData(x, labels, val_embeddings=x, val_labels=labels + 10))
    with pytest.raises(ValueError, match="fewer than 2 writers"):
        evaluate([LinearProbe()], EvalData(x[:5], np.zeros(5), reference_embeddings=x, reference_labels=np.zeros(60)))
    with pytest.raises(ValueError, match="train_on"):
        LinearProbe(train_on="test")
    with pytest.raises(ValueError, match="c=0"):
        LinearProbe(c=0)
