"""k-means cluster assignments, as pytorch-metric-learning's AccuracyCalculator makes them."""

from __future__ import annotations

import numpy as np
import torch

from .backend import as_matrix, faiss_module, resolve_engine


def kmeans_assign(x: np.ndarray | torch.Tensor, clusters: int, *, iterations: int = 20, seed: int = 1234,
                  engine: str = "auto") -> np.ndarray:
    """Cluster ``x`` (N, D) into ``clusters`` groups with Lloyd's k-means; returns (N,) int64 cluster ids.

    With FAISS: ``faiss.Kmeans(D, clusters, niter=iterations, seed=seed)`` then the nearest
    centroid of each row, which is PML's ``FaissKMeans(niter=20)`` exactly (1234 is
    FAISS's default seed), so NMI and AMI match PML's. Without FAISS: scikit-learn's
    ``KMeans`` (one k-means++ start), the same objective but not the same clusters.
    """
    x = as_matrix(x, "x")
    if not 1 <= clusters <= len(x):
        raise ValueError(f"clusters={clusters} must be between 1 and the number of rows ({len(x)})")
    if resolve_engine(engine) == "faiss":
        faiss = faiss_module()
        # min_points_per_centroid only decides when FAISS prints a warning (few points per cluster is normal here)
        kmeans = faiss.Kmeans(x.shape[1], clusters, niter=iterations, seed=seed, min_points_per_centroid=1)
        kmeans.train(x)
        return kmeans.index.search(x, 1)[1][:, 0].astype(np.int64)
    from sklearn.cluster import KMeans
    return KMeans(clusters, n_init=1, max_iter=iterations, random_state=seed).fit_predict(x).astype(np.int64)
