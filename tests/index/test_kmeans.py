"""kmeans_assign reproduces pytorch-metric-learning's FaissKMeans; the fallback finds the same clusters."""

from __future__ import annotations

import numpy as np
import pytest
from pytorch_metric_learning.utils.inference import FaissKMeans
from sklearn.metrics import adjusted_rand_score

from hvkit.index import kmeans_assign

from .conftest import clustered


def test_faiss_kmeans_equals_pml():
    x, _ = clustered(n=600, dim=8, classes=10, seed=5)
    import torch
    expected = FaissKMeans(niter=20)(torch.from_numpy(x), 10).numpy()
    np.testing.assert_array_equal(kmeans_assign(x, 10, engine="faiss"), expected)


def test_fallback_finds_well_separated_clusters(no_faiss):
    x, labels = clustered(n=300, dim=8, classes=5, noise=0.05, seed=6)
    assert adjusted_rand_score(labels, kmeans_assign(x, 5)) == pytest.approx(1.0)


def test_cluster_count_is_checked():
    with pytest.raises(ValueError, match="clusters=5"):
        kmeans_assign(np.ones((4, 2), np.float32), 5)


def test_few_points_per_cluster_print_no_faiss_warning(capfd):
    x, _ = clustered(n=60, dim=4, classes=20, seed=7)
    assert len(np.unique(kmeans_assign(x, 20, engine="faiss"))) == 20
    assert "WARNING" not in capfd.readouterr().err
