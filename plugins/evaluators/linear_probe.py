"""Linear probe: how linearly separable the writers are in frozen embeddings."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hvkit.evaluation import EvalData


def writer_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(train, test)`` of a closed-set identification split: each writer with at least two
    images gives ``min(n - 1, max(1, round(fraction * n)))`` of its ``n`` images, drawn at random
    (``seed``), to training and the rest to testing; a writer with one image is left out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for writer in np.unique(labels):
        rows = np.flatnonzero(labels == writer)
        if len(rows) < 2:
            continue
        rows = rng.permutation(rows)
        k = min(len(rows) - 1, max(1, round(fraction * len(rows))))
        train.append(rows[:k])
        test.append(rows[k:])
    return tuple(np.sort(np.concatenate(part)) if part else np.empty(0, dtype=np.int64) for part in (train, test))


class LinearProbe:
    """Linear probe: accuracy of a logistic regression trained on frozen embeddings of known writers.

    Trains scikit-learn's multinomial ``LogisticRegression`` (L2 penalty, inverse strength ``c``,
    default 1.0, lbfgs for at most ``max_iter`` = 1000 steps) on standardised embeddings and reports
    its accuracy on test embeddings; with the cosine metric the embeddings are L2-normalised first.
    ``train_on``: ``reference`` or ``val`` trains on that set and tests every test embedding (each
    test writer must appear in it); ``split`` is closed-set writer identification among the test
    writers: a seeded ``train_fraction`` of each writer's images trains and the rest are tested
    (:func:`writer_split`), as the linear evaluation of self-supervised features (Kolesnikov, Zhai &
    Beyer 2019) on held-out images of known classes; ``auto`` (default) is ``reference`` when the
    evaluation has a reference set, else ``split`` (the ``evaluate`` stage's case), skipped
    (``skipped: true``) when fewer than two test writers have two images.
    """

    name = "linear_probe"
    requires = frozenset()

    def __init__(self, train_on: Literal["auto", "reference", "val", "split"] = "auto", c: float = 1.0,
                 max_iter: int = 1000, train_fraction: float = 0.5, seed: int = 0):
        if train_on not in ("auto", "reference", "val", "split"):
            raise ValueError(f"train_on={train_on!r} must be 'auto', 'reference', 'val' or 'split'")
        if c <= 0 or max_iter < 1:
            raise ValueError(f"c={c} must be > 0 and max_iter={max_iter} >= 1")
        if not 0 < train_fraction < 1:
            raise ValueError(f"train_fraction={train_fraction} must be in (0, 1)")
        self.train_on, self.c, self.max_iter = train_on, c, max_iter
        self.train_fraction, self.seed = train_fraction, seed

    def _sets(self, data: EvalData) -> tuple[str, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The protocol used and its ``(train x, train y, test x, test y)``."""
        train_on = self.train_on
        if train_on == "auto":
            train_on = "reference" if data.reference_embeddings is not None else "split"
        if train_on == "split":
            train, test = writer_split(data.labels, self.train_fraction, self.seed)
            return train_on, data.embeddings[train], data.labels[train], data.embeddings[test], data.labels[test]
        x, y = getattr(data, f"{train_on}_embeddings"), getattr(data, f"{train_on}_labels")
        if x is None:
            raise ValueError(f"linear_probe: train_on={train_on!r} but the evaluation has no {train_on}_embeddings; "
                             "pass them or choose another train_on")
        unseen = np.setdiff1d(data.labels, y)
        if len(unseen):
            raise ValueError(f"linear_probe: {len(unseen)} test writer(s) are absent from the {train_on} set, so "
                             "no linear classifier can name them; train on a gallery of the test writers, or use "
                             "train_on: split")
        return train_on, x, y, data.embeddings, data.labels

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        train_on, x, y, test, truth = self._sets(data)
        writers = len(np.unique(y))  # in a split, the test writers with two images or more
        if writers < 2 and train_on == "split":
            if self.train_on == "auto":
                return {"skipped": True, "writers_with_two_images": writers}
            raise ValueError(f"linear_probe: {writers} test writer(s) have two or more images; a per-writer split "
                             "needs at least 2")
        if writers < 2:
            raise ValueError(f"linear_probe: the {train_on} set has fewer than 2 writers; nothing to classify")
        if data.metric == "cosine":
            x, test = (v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12) for v in (x, test))
        model = make_pipeline(StandardScaler(), LogisticRegression(C=self.c, max_iter=self.max_iter))
        model.fit(x, y)
        return {"accuracy": float(np.mean(model.predict(test) == truth)), "split": train_on == "split",
                "train_size": len(y), "test_size": len(truth), "classes": writers}
