"""Which engine does the work: FAISS (on the local rank's GPU when faiss-gpu sees one) or torch.

Every function of :mod:`hvkit.index` takes ``engine``: ``"faiss"``, ``"torch"`` (blocked
matrix products, same results, no FAISS needed) or ``"auto"`` (FAISS when installed; exact
self-retrieval on the CPU by the symmetric kernel of :mod:`hvkit.index.symmetric` where built).
Similarities follow one convention: higher = more alike. ``"cosine"`` normalises the
vectors and takes inner products, ``"ip"`` takes raw inner products, ``"l2"`` scores a pair
by minus its squared Euclidean distance.
"""

from __future__ import annotations

import functools
import os
from types import ModuleType
from typing import Literal

import numpy as np
import torch

Metric = Literal["cosine", "ip", "l2"]
Engine = Literal["auto", "faiss", "torch"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")
ENGINES: tuple[str, ...] = ("auto", "faiss", "torch")
INSTALL_HINT = "pip install faiss-cpu (or faiss-gpu-cu12 on a CUDA machine)"


@functools.cache
def faiss_module() -> ModuleType | None:
    """The ``faiss`` module, or None when it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def require_faiss(what: str) -> ModuleType:
    """The ``faiss`` module; an ImportError naming the package to install when it is missing."""
    faiss = faiss_module()
    if faiss is None:
        raise ImportError(f"{what} needs FAISS, which is not installed: {INSTALL_HINT}")
    return faiss


def resolve_engine(engine: str) -> str:
    """``"faiss"`` or ``"torch"`` for an engine option (``"auto"`` picks FAISS when installed)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r} is not one of {', '.join(ENGINES)}")
    if engine == "auto":
        return "faiss" if faiss_module() is not None else "torch"
    if engine == "faiss":
        require_faiss("engine='faiss'")
    return engine


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r} is not one of {', '.join(METRICS)}")


def local_rank() -> int:
    """This process's rank on its machine (env ``LOCAL_RANK``, set by torchrun), 0 otherwise."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def faiss_gpu() -> int | None:
    """The GPU FAISS should use — the local rank's — when faiss-gpu sees any GPU, else None."""
    faiss = faiss_module()
    if faiss is None or not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return None
    rank, count = local_rank(), faiss.get_num_gpus()
    if rank >= count:
        raise ValueError(f"LOCAL_RANK={rank} but FAISS sees only {count} GPU(s); "
                         "set CUDA_VISIBLE_DEVICES so that every rank has its own GPU")
    return rank


def torch_device(device: str) -> torch.device:
    """``"auto"`` is the local rank's GPU when CUDA is available, else the CPU; bare ``"cuda"`` also means the local rank's."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank()}"
    return torch.device(device)


def as_matrix(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 (N, D) NumPy array (no copy when it already is one)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be a 2-D (N, D) array, got shape {x.shape}")
    return x


def prepare(x: np.ndarray | torch.Tensor, metric: str, name: str) -> np.ndarray:
    """``x`` as float32 (N, D), L2-normalised for the cosine metric (a copy; the input is untouched)."""
    check_metric(metric)
    x = as_matrix(x, name)
    if metric == "cosine":
        x = torch.nn.functional.normalize(torch.from_numpy(x), dim=1).numpy()
    return x


def prepare_tensors(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor | None, metric: str,
                    device: str, names: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``a`` and ``b`` (``a`` itself when None) prepared for ``metric`` as float32 tensors on ``device``."""
    dev = torch_device(device)
    left = torch.from_numpy(prepare(a, metric, names[0])).to(dev)
    right = left if b is None else torch.from_numpy(prepare(b, metric, names[1])).to(dev)
    if left.shape[1] != right.shape[1]:
        raise ValueError(f"{names[0]} have dimension {left.shape[1]} but {names[1]} has {right.shape[1]}")
    return left, right

