"""Linear probe: how linearly separable the writers are in frozen embeddings."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hvkit.evaluation import EvalData


class LinearProbe:
    """Linear probe: accuracy of a logistic regression trained on frozen gallery embeddings.

    Trains scikit-learn's multinomial ``LogisticRegression`` (L2 penalty, inverse
    strength ``c``, default 1.0, lbfgs for at most ``max_iter`` = 1000 steps) on
    standardised ``reference`` (default) or ``val`` embeddings and reports its accuracy on
    the test embeddings; with the cosine metric the embeddings are L2-normalised first.
    Every test writer must appear in the training set (a gallery of the test writers).
    """

    name = "linear_probe"
    requires = frozenset()

    def __init__(self, train_on: Literal["reference", "val"] = "reference", c: float = 1.0, max_iter: int = 1000):
        if train_on not in ("reference", "val"):
            raise ValueError(f"train_on={train_on!r} must be 'reference' or 'val'")
        if c <= 0 or max_iter < 1:
            raise ValueError(f"c={c} must be > 0 and max_iter={max_iter} >= 1")
        self.train_on, self.c, self.max_iter = train_on, c, max_iter

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        x, y = getattr(data, f"{self.train_on}_embeddings"), getattr(data, f"{self.train_on}_labels")
        if x is None:
            raise ValueError(f"linear_probe: train_on={self.train_on!r} but the evaluation has no "
                             f"{self.train_on}_embeddings; pass them or choose the other set")
        if len(np.unique(y)) < 2:
            raise ValueError(f"linear_probe: the {self.train_on} set has fewer than 2 writers; nothing to classify")
        unseen = np.setdiff1d(data.labels, y)
        if len(unseen):
            raise ValueError(f"linear_probe: {len(unseen)} test writer(s) are absent from the {self.train_on} "
                             "set, so no linear classifier can name them; train on a gallery of the test writers")
        if data.metric == "cosine":
            x, test = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)
                       for v in (x, data.embeddings))
        else:
            test = data.embeddings
        model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=self.max_iter))
        model.fit(x, y)
        return {"accuracy": float(np.mean(model.predict(test) == data.labels)), "train_size": len(y),
                "classes": len(np.unique(y))}
