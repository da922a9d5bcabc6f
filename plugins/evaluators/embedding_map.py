"""A 2-D picture of the embedding space: a sample of test writers, one colour each."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np

from hvkit.evaluation import EvalData
from hvkit.evaluation.plots import new_figure


class EmbeddingMap:
    """Embedding map: 2-D PCA or t-SNE of a sample of test writers, coloured by writer, as PNG.

    Draws ``writers`` (default 20) test writers at random (``seed``), at most
    ``max_points`` (default 2000) embeddings in all, L2-normalised under the cosine
    metric, projects them with PCA (default; reports the explained variance) or t-SNE
    (scikit-learn, perplexity ≤ 30; seconds at this size) and writes
    ``embedding_map.png`` to ``out_dir``. Without ``out_dir`` it does nothing.
    """

    name = "embedding_map"
    requires = frozenset()

    def __init__(self, method: Literal["pca", "tsne"] = "pca", writers: int = 20, max_points: int = 2000,
                 seed: int = 0):
        if method not in ("pca", "tsne"):
            raise ValueError(f"method={method!r} must be 'pca' or 'tsne'")
        if writers < 1 or max_points < 3:
            raise ValueError(f"writers={writers} must be >= 1 and max_points={max_points} >= 3")
        self.method, self.writers, self.max_points, self.seed = method, writers, max_points, seed

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        if data.out_dir is None:
            return {}
        rng = np.random.default_rng(self.seed)
        present = np.unique(data.labels)
        chosen = rng.choice(present, min(self.writers, len(present)), replace=False)
        rows = np.flatnonzero(np.isin(data.labels, chosen))
        if len(rows) > self.max_points:
            rows = np.sort(rng.choice(rows, self.max_points, replace=False))
        if len(rows) < 3:
            raise ValueError(f"embedding_map: only {len(rows)} embeddings to draw; at least 3 are needed")
        x = data.embeddings[rows].astype(np.float64)
        if data.metric == "cosine":
            x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        out: dict[str, Any] = {"plot": "embedding_map.png", "writers": len(chosen), "points": len(rows)}
        if self.method == "pca":
            from sklearn.decomposition import PCA
            pca = PCA(2, random_state=self.seed)
            xy = pca.fit_transform(x)
            out["explained_variance"] = [float(v) for v in pca.explained_variance_ratio_]
        else:
            from sklearn.manifold import TSNE
            xy = TSNE(2, perplexity=min(30.0, (len(rows) - 1) / 3), init="pca",
                      random_state=self.seed).fit_transform(x)
        _plot(xy, data.labels[rows], data.out_dir / out["plot"], f"{self.method.upper()} of {len(chosen)} writers")
        return out


def _plot(xy: np.ndarray, labels: np.ndarray, path: Path, title: str) -> None:
    figure = new_figure(6.0, 6.0)
    axes = figure.subplots()
    codes = np.unique(labels, return_inverse=True)[1]
    axes.scatter(xy[:, 0], xy[:, 1], c=codes, cmap="tab20", s=8)
    axes.set(title=title, xticks=[], yticks=[])
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=100)
