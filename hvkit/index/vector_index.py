"""Build, search, save and load embedding indexes; kNN retrieval.

``VectorIndex`` holds reference embeddings and answers k-nearest-neighbour queries:
exact (``kind="flat"``: FAISS ``IndexFlat``, or blocked torch products without FAISS) or
approximate (``"ivf"``: ``IndexIVFFlat``, ``"hnsw"``: ``IndexHNSWFlat``, FAISS only).
With faiss-gpu and a visible GPU, flat and IVF indexes search on the local rank's GPU
(``LOCAL_RANK``); HNSW has no GPU version and stays on the CPU. Queries are searched in
blocks, so memory is the (Nq, k) answer plus one block.

``knn`` is the one-call form used by evaluation: queries against a reference set, or
self-retrieval (each embedding against all the others, itself excluded).
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from .backend import check_metric, faiss_gpu, prepare, require_faiss, resolve_engine, torch_device
from .blocks import blocked_topk
from .symmetric import available as symmetric_available
from .symmetric import symmetric_topk

Kind = Literal["flat", "ivf", "hnsw"]
KINDS: tuple[str, ...] = ("flat", "ivf", "hnsw")
GPU_MAX_K = 2048
"""FAISS GPU searches return at most this many neighbours; larger k searches on the CPU."""


class VectorIndex:
    """Reference embeddings searchable by similarity; see the module docstring for the kinds.

    ``metric``: ``"cosine"`` (default), ``"ip"`` or ``"l2"``; scores are similarities, best
    first (minus the squared distance for ``"l2"``). IVF is trained by k-means on the
    first ``add`` (at least ``nlist`` vectors; FAISS advises 39 × ``nlist``) and searches
    ``nprobe`` of its ``nlist`` cells; HNSW links each vector to ``hnsw_m`` neighbours and
    searches with breadth ``ef_search``. ``device`` places the torch engine's vectors.
    """

    def __init__(self, dim: int, *, metric: str = "cosine", kind: Kind = "flat", engine: str = "auto",
                 nlist: int = 1024, nprobe: int = 16, hnsw_m: int = 32, ef_search: int = 64,
                 query_block: int = 16384, device: str = "cpu"):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is not one of {', '.join(KINDS)}")
        if min(dim, nlist, nprobe, hnsw_m, ef_search, query_block) < 1:
            raise ValueError("dim, nlist, nprobe, hnsw_m, ef_search and query_block must all be >= 1")
        if kind != "flat":
            if engine == "torch":
                raise ValueError(f"kind={kind!r} is approximate search, which only FAISS does: use engine='faiss'")
            require_faiss(f"VectorIndex(kind={kind!r})")
        check_metric(metric)
        self.dim, self.metric, self.kind = dim, metric, kind
        self.nlist, self.nprobe, self.hnsw_m, self.ef_search = nlist, nprobe, hnsw_m, ef_search
        self.query_block, self.device = query_block, device
        self.engine = resolve_engine(engine)
        self._vectors: list[np.ndarray] = []
        self._index = self._new_faiss_index() if self.engine == "faiss" else None
        self._gpu_index = self._gpu_resources = None

    def _new_faiss_index(self):
        faiss = require_faiss("VectorIndex")
        metric = faiss.METRIC_L2 if self.metric == "l2" else faiss.METRIC_INNER_PRODUCT
        spec = {"flat": "Flat", "ivf": f"IVF{self.nlist},Flat", "hnsw": f"HNSW{self.hnsw_m},Flat"}[self.kind]
        index = faiss.index_factory(self.dim, spec, metric)
        self._set_search_parameters(faiss.ParameterSpace(), index)
        return index

    def _set_search_parameters(self, space, index) -> None:
        if self.kind == "ivf":
            space.set_index_parameter(index, "nprobe", self.nprobe)
        elif self.kind == "hnsw":
            space.set_index_parameter(index, "efSearch", self.ef_search)

    @property
    def ntotal(self) -> int:
        """Number of vectors indexed."""
        if self._index is not None:
            return int(self._index.ntotal)
        return sum(len(v) for v in self._vectors)

    def add(self, vectors: np.ndarray | torch.Tensor) -> None:
        """Index ``vectors`` (N, dim); they get ids ``ntotal .. ntotal + N - 1``."""
        x = prepare(vectors, self.metric, "vectors")
        if x.shape[1] != self.dim:
            raise ValueError(f"vectors have dimension {x.shape[1]} but the index has {self.dim}")
        if self._index is None:
            self._vectors.append(x)
            return
        if not self._index.is_trained:
            if len(x) < self.nlist:
                raise ValueError(f"an IVF index with nlist={self.nlist} must first be given at least "
                                 f"{self.nlist} vectors to train on (got {len(x)}): lower nlist")
            self._index.train(x)
        self._index.add(x)
        self._gpu_index = None

    def search(self, queries: np.ndarray | torch.Tensor, k: int, *,
               exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most similar indexed vectors of each query: ``(scores, ids)``, each (Nq, k), best first.

        ``exclude_self=True`` is self-retrieval: the queries are the indexed vectors in id
        order, and each query's own id is left out of its answer. Approximate indexes may
        find fewer than ``k``: the missing ids are -1.
        """
        q = prepare(queries, self.metric, "queries")
        k = int(k)
        if q.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {q.shape[1]} but the index has {self.dim}")
        if exclude_self and len(q) != self.ntotal:
            raise ValueError(f"exclude_self=True needs the indexed vectors as queries: got {len(q)} "
                             f"queries for {self.ntotal} indexed vectors")
        wanted = k + int(exclude_self)
        if not 1 <= wanted <= self.ntotal:
            raise ValueError(f"k={k} must be between 1 and {self.ntotal - int(exclude_self)} "
                             f"(the number of {'other ' if exclude_self else ''}indexed vectors)")
        if self._index is None:
            prepared = "ip" if self.metric == "cosine" else self.metric  # q and vectors are normalised already
            scores, ids = blocked_topk(q, wanted, np.concatenate(self._vectors), metric=prepared,
                                       device=self.device)
        else:
            scores, ids = self._faiss_search(q, wanted)
        if exclude_self:
            scores, ids = _drop_self(scores, ids)
        return scores, ids

    def _faiss_search(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        index = self._searcher(k)
        scores = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for start in range(0, len(q), self.query_block):
            stop = min(start + self.query_block, len(q))
            index.search(q[start:stop], k, D=scores[start:stop], I=ids[start:stop])
        if self.metric == "l2":
            np.negative(scores, out=scores)
        return scores, ids

    def _searcher(self, k: int):
        """The local rank's GPU copy of the index when faiss-gpu can search it, else the CPU index."""
        gpu = faiss_gpu()
        if gpu is None or self.kind == "hnsw" or k > GPU_MAX_K:
            return self._index
        if self._gpu_index is None:
            faiss = require_faiss("GPU search")
            self._gpu_resources = faiss.StandardGpuResources()
            self._gpu_index = faiss.index_cpu_to_gpu(self._gpu_resources, gpu, self._index)
            self._set_search_parameters(faiss.GpuParameterSpace(), self._gpu_index)
        return self._gpu_index

    def save(self, path: str | Path) -> None:
        """Write the index to one ``.npz`` file (atomically: an old file is replaced only once the new one is complete)."""
        path = Path(path)
        meta = {"format": 1, "dim": self.dim, "metric": self.metric, "kind": self.kind, "nlist": self.nlist,
                "nprobe": self.nprobe, "hnsw_m": self.hnsw_m, "ef_search": self.ef_search}
        if self._index is None:
            vectors = np.concatenate(self._vectors) if self._vectors else np.zeros((0, self.dim), np.float32)
            arrays = {"vectors": vectors}
        else:
            arrays = {"faiss": require_faiss("saving a FAISS index").serialize_index(self._index)}
        buffer = io.BytesIO()
        np.savez(buffer, meta=np.array(json.dumps(meta)), **arrays)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buffer.getvalue())
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path, *, engine: str = "auto", device: str = "cpu") -> "VectorIndex":
        """Read an index written by :meth:`save`; a flat index loads into either engine."""
        with np.load(Path(path), allow_pickle=False) as stored:
            meta = json.loads(str(stored["meta"]))
            if meta.get("format") != 1:
                raise ValueError(f"{path}: not a hvkit index file (format {meta.get('format')!r})")
            params = {k: meta[k] for k in ("metric", "kind", "nlist", "nprobe", "hnsw_m", "ef_search")}
            if "faiss" in stored.files:
                faiss = require_faiss(f"loading {path}")
                stored_index = faiss.deserialize_index(stored["faiss"])
                index = cls(meta["dim"], engine=engine, device=device, **params)
                if index.engine == "faiss":
                    index._index = stored_index
                    index._set_search_parameters(faiss.ParameterSpace(), stored_index)
                else:
                    index._vectors.append(stored_index.reconstruct_n(0, stored_index.ntotal))
            else:
                index = cls(meta["dim"], engine=engine, device=device, **params)
                if len(stored["vectors"]):
                    index.add(stored["vectors"])
        return index


def _drop_self(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Remove each row's own id from a (k+1)-wide answer, or its last entry when the own id is absent."""
    own = ids == np.arange(len(ids))[:, None]
    own[~own.any(axis=1), -1] = True
    keep = ~own
    shape = (len(ids), ids.shape[1] - 1)
    return scores[keep].reshape(shape), ids[keep].reshape(shape)


def knn(query: np.ndarray | torch.Tensor, k: int, reference: np.ndarray | torch.Tensor | None = None, *,
        metric: str = "cosine", engine: str = "auto", device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours: ``(scores, ids)``, each (Nq, k), most similar first.

    Against ``reference`` when given; otherwise self-retrieval: each query row against all
    the other query rows (its own row excluded, as pytorch-metric-learning does). Self-retrieval
    by cosine or inner product on the CPU with ``engine="auto"`` scores each pair once with
    the symmetric kernel (:mod:`hvkit.index.symmetric`) where it is built.
    """
    if (reference is None and engine == "auto" and metric != "l2" and torch_device(device).type == "cpu"
            and faiss_gpu() is None and symmetric_available()):
        return symmetric_topk(prepare(query, metric, "queries"), int(k))
    base = query if reference is None else reference
    index = VectorIndex(int(base.shape[1]), metric=metric, engine=engine, device=device)
    index.add(base)
    return index.search(query, k, exclude_self=reference is None)
