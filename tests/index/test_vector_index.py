"""VectorIndex and knn: exact against brute force, FAISS against the torch fallback, save/load, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hvkit.index import VectorIndex, backend, knn

from .conftest import clustered


def brute_force(query: np.ndarray, k: int, reference: np.ndarray | None, metric: str) -> np.ndarray:
    """Neighbour ids by a float64 similarity matrix, the query itself excluded without a reference."""
    q = query.astype(np.float64)
    r = q if reference is None else reference.astype(np.float64)
    if metric == "cosine":
        q, r = (v / np.linalg.norm(v, axis=1, keepdims=True) for v in (q, r))
    sim = -((q[:, None, :] - r[None, :, :]) ** 2).sum(-1) if metric == "l2" else q @ r.T
    if reference is None:
        np.fill_diagonal(sim, -np.inf)
    return np.argsort(-sim, axis=1, kind="stable")[:, :k]


@pytest.mark.parametrize("engine", ["faiss", "torch", "auto"])  # auto self-retrieval: the symmetric kernel
@pytest.mark.parametrize("metric", ["cosine", "ip", "l2"])
@pytest.mark.parametrize("self_retrieval", [True, False])
def test_knn_matches_brute_force(data, engine, metric, self_retrieval):
    x, _ = data
    query, reference = (x, None) if self_retrieval else (x[:100], x[100:])
    scores, ids = knn(query, np.int64(7), reference, metric=metric, engine=engine)  # NumPy k, as from a bincount
    assert scores.shape == ids.shape == (len(query), 7)
    np.testing.assert_array_equal(ids, brute_force(query, 7, reference, metric))
    assert np.all(np.diff(scores, axis=1) <= 1e-6), "best first"
    if self_retrieval:
        assert not np.any(ids == np.arange(len(x))[:, None]), "a query must not retrieve itself"


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_fallback_and_faiss_give_the_same_neighbours_and_scores(metric):
    x, _ = clustered(n=500, dim=32, seed=3)
    faiss_scores, faiss_ids = knn(x, 20, metric=metric, engine="faiss")
    torch_scores, torch_ids = knn(x, 20, metric=metric, engine="torch")
    np.testing.assert_array_equal(faiss_ids, torch_ids)
    np.testing.assert_allclose(faiss_scores, torch_scores, rtol=1e-5, atol=1e-4)


def test_auto_engine_without_faiss_uses_the_fallback(data, no_faiss):
    x, _ = data
    index = VectorIndex(x.shape[1])
    assert index.engine == "torch"
    index.add(x)
    _, ids = index.search(x, 5, exclude_self=True)
    np.testing.assert_array_equal(ids, brute_force(x, 5, None, "cosine"))


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_kinds_without_faiss_name_the_package_to_install(kind, no_faiss):
    with pytest.raises(ImportError, match="faiss-cpu.*faiss-gpu-cu12"):
        VectorIndex(8, kind=kind)


def test_faiss_engine_without_faiss_names_the_package(no_faiss):
    with pytest.raises(ImportError, match="pip install faiss-cpu"):
        VectorIndex(8, engine="faiss")


def test_blocked_queries_equal_one_block(data):
    x, _ = data
    whole = VectorIndex(x.shape[1], query_block=10_000)
    blocked = VectorIndex(x.shape[1], query_block=7)
    for index in (whole, blocked):
        index.add(x)
    for a, b in zip(whole.search(x, 9, exclude_self=True), blocked.search(x, 9, exclude_self=True)):
        np.testing.assert_array_equal(a, b)


def test_self_retrieval_with_duplicates_drops_one_entry_per_row():
    x = np.repeat(np.eye(4, dtype=np.float32), 3, axis=0)  # 4 groups of 3 identical rows
    for engine in ("faiss", "torch"):
        scores, ids = knn(x, 2, engine=engine)
        assert ids.shape == (12, 2)
        assert not np.any(ids == np.arange(12)[:, None])
        np.testing.assert_array_equal(ids // 3, np.repeat(np.arange(4), 3)[:, None].repeat(2, 1))
        np.testing.assert_allclose(scores, 1.0, rtol=1e-6)


@pytest.mark.parametrize("engine", ["faiss", "torch"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_flat_save_load_round_trip(tmp_path, data, engine, metric):
    x, _ = data
    index = VectorIndex(x.shape[1], metric=metric, engine=engine)
    index.add(x[:200])
    index.add(x[200:])
    path = tmp_path / "flat.index"
    index.save(path)
    before = index.search(x[:50], 6)
    for load_engine in ("faiss", "torch"):
        loaded = VectorIndex.load(path, engine=load_engine)
        assert (loaded.ntotal, loaded.metric, loaded.kind, loaded.engine) == (300, metric, "flat", load_engine)
        after = loaded.search(x[:50], 6)
        np.testing.assert_array_equal(before[1], after[1])
        np.testing.assert_allclose(before[0], after[0], rtol=1e-5, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp")), "no temporary file left behind"


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_indexes_find_most_true_neighbours_and_round_trip(tmp_path, kind):
    x, _ = clustered(n=2000, dim=16, classes=20, seed=1)
    index = VectorIndex(x.shape[1], kind=kind, nlist=16, nprobe=8, hnsw_m=16, ef_search=64)
    index.add(x)
    scores, ids = index.search(x[:200], 10)
    exact = brute_force(x[:200], 10, x, "cosine")
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, exact)])
    assert recall > 0.9
    index.save(tmp_path / "approx.index")
    loaded = VectorIndex.load(tmp_path / "approx.index")
    assert (loaded.kind, loaded.nprobe, loaded.ef_search) == (kind, 8, 64)
    np.testing.assert_array_equal(loaded.search(x[:200], 10)[1], ids)


def test_save_replaces_an_old_file_only_when_complete(tmp_path, data, monkeypatch):
    x, _ = data
    path = tmp_path / "index.npz"
    index = VectorIndex(x.shape[1], engine="torch")
    index.add(x[:10])
    index.save(path)
    good = path.read_bytes()
    index.add(x[10:])
    monkeypatch.setattr(np, "savez", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        index.save(path)
    assert path.read_bytes() == good


@pytest.mark.parametrize("bad, match", [
    ({"kind": "lsh"}, "kind='lsh'"),
    ({"metric": "manhattan"}, "metric='manhattan'"),
    ({"engine": "annoy"}, "engine='annoy'"),
    ({"kind": "ivf", "engine": "torch"}, "only FAISS"),
    ({"nprobe": 0}, ">= 1"),
])
def test_invalid_options_raise_value_error(bad, match):
    with pytest.raises(ValueError, match=match):
        VectorIndex(8, **bad)


def test_search_errors(data):
    x, _ = data
    index = VectorIndex(x.shape[1])
    index.add(x[:10])
    with pytest.raises(ValueError, match="between 1 and 9"):
        index.search(x[:10], 10, exclude_self=True)
    with pytest.raises(ValueError, match="dimension"):
        index.search(x[:3, :4], 2)
    with pytest.raises(ValueError, match="exclude_self"):
        index.search(x[:5], 2, exclude_self=True)
    with pytest.raises(ValueError, match="2-D"):
        index.add(x[0])
    ivf = VectorIndex(x.shape[1], kind="ivf", nlist=64)
    with pytest.raises(ValueError, match="nlist=64"):
        ivf.add(x[:10])


def test_gpu_is_the_local_ranks(monkeypatch):
    class FakeFaiss:
        @staticmethod
        def get_num_gpus() -> int:
            return 2

    monkeypatch.setattr(backend, "faiss_module", lambda: FakeFaiss)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert backend.faiss_gpu() == 1
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(ValueError, match="LOCAL_RANK=2"):
        backend.faiss_gpu()
    monkeypatch.setattr(FakeFaiss, "get_num_gpus", staticmethod(lambda: 0))
    assert backend.faiss_gpu() is None


@pytest.mark.skipif(backend.faiss_gpu() is None, reason="needs faiss-gpu and a GPU")
def test_faiss_gpu_search_is_exact(data):
    x, _ = data
    index = VectorIndex(x.shape[1])
    index.add(x)
    _, ids = index.search(x, 5)
    assert index._gpu_index is not None, "the search ran on the GPU"
    np.testing.assert_array_equal(ids, brute_force(x, 5, x, "cosine"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_torch_engine_on_cuda_equals_cpu(data):
    x, _ = data
    np.testing.assert_array_equal(knn(x, 5, engine="torch", device="cuda")[1], knn(x, 5, engine="torch")[1])
