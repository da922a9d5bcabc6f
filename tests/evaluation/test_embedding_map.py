"""The embedding map draws a PNG of a writer sample; PCA's explained variance is scikit-learn's."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from sklearn.decomposition import PCA

from hvkit.evaluation import EvalData, evaluate
from hvkit_plugins.evaluators.embedding_map import EmbeddingMap

from .reference import clustered


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_writes_a_png_of_the_sampled_writers(tmp_path, method):
    x, labels = clustered(n=300, classes=10, seed=1)
    out = evaluate([EmbeddingMap(method=method, writers=4, max_points=50)],
                   EvalData(x, labels, out_dir=tmp_path))["embedding_map"]
    assert out["plot"] == "embedding_map.png" and out["writers"] == 4 and out["points"] <= 50
    with Image.open(tmp_path / "embedding_map.png") as image:
        assert image.format == "PNG"
        image.verify()


def test_pca_explained_variance_is_sklearns(tmp_path):
    x, labels = clustered(n=120, classes=4, seed=2)
    out = evaluate([EmbeddingMap(writers=4, max_points=1000)], EvalData(x, labels, out_dir=tmp_path, metric="l2"))
    expected = PCA(2).fit(x.astype(np.float64)).explained_variance_ratio_
    np.testing.assert_allclose(out["embedding_map"]["explained_variance"], expected, rtol=1e-6)
    assert out["embedding_map"]["points"] == 120


def test_no_out_dir_no_work():
    x, labels = clustered(n=30, classes=3)
    assert evaluate([EmbeddingMap()], EvalData(x, labels))["embedding_map"] == {}


@pytest.mark.parametrize("params, match", [({"method": "umap"}, "method"), ({"writers": 0}, "writers"),
                                           ({"max_points": 2}, "max_points")])
def test_invalid_params(params, match):
    with pytest.raises(ValueError, match=match):
        EmbeddingMap(**params)
