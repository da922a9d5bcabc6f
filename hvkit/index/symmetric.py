"""Exact self-retrieval that scores each pair once: the upper triangle of the Gram matrix.

A kNN search of N embeddings against themselves computes every similarity twice
(s_ij = s_ji); FAISS's flat search does. Here the tiles S = X_I X_J^T with J ≥ I come from
torch matrix products, half the work, and each tile feeds two selections: its rows to the
queries of block I and its columns to those of block J. The selection is the native kernel
``_symtopk.c`` (AVX-512F or AVX2): a score enters a query's candidate list only when it
beats the query's current k-th best, which after the first tiles almost none do. Tiles go
in rounds of block pairs that share no block, one tile per thread (product and both
passes), so no two threads ever touch the same query. Answers equal the exact top k (up to
float32 rounding of the products, as any two BLAS differ).
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

_P, _I = ctypes.c_void_p, ctypes.c_int64
_LISTS = [_P, _P, _P, _P, _I, _I]


ISAS: tuple[str, ...] = ("avx2", "avx512f")
"""The kernel's instruction sets, narrowest first."""


@functools.cache
def _kernel() -> tuple[ctypes.CDLL, tuple[str, ...]] | None:
    """The built kernel and the instruction sets this CPU runs it with, or None."""
    spec = importlib.util.find_spec("hvkit.index._symtopk")
    if spec is None or spec.origin is None:
        return None
    lib = ctypes.CDLL(spec.origin)
    isas = ISAS[:lib.symtopk_level()]
    if not isas:
        return None
    for isa in isas:
        for name in (f"symtopk_rows_{isa}", f"symtopk_cols_{isa}"):
            getattr(lib, name).argtypes = _LISTS + [_P, _I, _I, _I, _I, _I]
            getattr(lib, name).restype = None
    lib.symtopk_finish.argtypes = _LISTS + [_I, _I, _P, _P]
    lib.symtopk_finish.restype = None
    return lib, isas


def available() -> tuple[str, ...]:
    """The instruction sets the built kernel can use on this CPU, widest last; empty when none."""
    found = _kernel()
    return () if found is None else found[1]


def _ranges(n: int, parts: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, min(parts, n) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _rounds(blocks: int) -> list[list[tuple[int, int]]]:
    """Every block pair (i <= j) once, in rounds whose pairs share no block (the circle method
    of round-robin tournaments, then the diagonal): a round's tiles can be selected in parallel."""
    players = list(range(blocks)) + ([-1] if blocks % 2 else [])
    m = len(players)
    rounds = [[(i, i) for i in range(blocks)]]
    for _ in range(m - 1):
        rounds.append([tuple(sorted((players[a], players[m - 1 - a]))) for a in range(m // 2)
                       if -1 not in (players[a], players[m - 1 - a])])
        players = [players[0], players[-1]] + players[1:-1]
    return [r for r in rounds if r]


def symmetric_topk(x: np.ndarray, k: int, *, block_size: int = 1024, threads: int | None = None,
                   isa: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Each row's ``k`` largest inner products with the *other* rows: ``(scores, ids)``, (N, k), best first.

    ``x``: C-contiguous float32 (N, D) (normalise it first for cosine); ``1 <= k <= N - 1``.
    Memory: N × 2k candidates (8 bytes each) plus one ``block_size``² tile per thread. Each of
    ``threads`` (default: torch's thread count) computes whole tiles, so torch itself runs
    single-threaded for the duration of the call. ``isa``: ``"avx512f"`` or ``"avx2"`` (default:
    the widest this CPU has).
    """
    found = _kernel()
    if found is None:
        raise RuntimeError("the symmetric top-k kernel is not built for this machine (hvkit.index._symtopk)")
    lib, isas = found
    isa = isa or isas[-1]
    if isa not in isas:
        raise ValueError(f"isa={isa!r}: this CPU runs the kernel with {', '.join(isas)}")
    row_pass, col_pass = getattr(lib, f"symtopk_rows_{isa}"), getattr(lib, f"symtopk_cols_{isa}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    if n >= 2**31:
        raise ValueError(f"{n} rows: the kernel's ids are int32")
    if not 1 <= k <= n - 1:
        raise ValueError(f"k={k} must be between 1 and {n - 1} (the number of other rows)")
    cap = 2 * k
    val = np.empty((n, cap), np.float32)
    ids = np.empty((n, cap), np.int32)
    cnt = np.zeros(n, np.int32)
    thr = np.full(n, -np.inf, np.float32)
    lists = (val.ctypes.data, ids.ctypes.data, cnt.ctypes.data, thr.ctypes.data, cap, k)
    xt = torch.from_numpy(x)
    workers = threads or torch.get_num_threads()
    tiles = threading.local()

    def pair(blocks: tuple[int, int]) -> None:
        i0, j0 = blocks[0] * block_size, blocks[1] * block_size
        rows, cols = xt[i0:i0 + block_size], xt[j0:j0 + block_size]
        if not hasattr(tiles, "buffer"):
            tiles.buffer = torch.empty(block_size, block_size)
        scores = tiles.buffer[:len(rows), :len(cols)]
        torch.mm(rows, cols.T, out=scores)
        ptr, ld = scores.data_ptr(), scores.stride(0)
        row_pass(*lists, ptr, ld, len(rows), len(cols), i0, j0)
        if j0 != i0:
            col_pass(*lists, ptr, ld, len(rows), len(cols), i0, j0)

    out_val = np.empty((n, k), np.float32)
    out_ids = np.empty((n, k), np.int64)
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for rnd in _rounds(-(-n // block_size)):
                list(pool.map(pair, rnd))
            list(pool.map(lambda r: lib.symtopk_finish(*lists, r[0], r[1], out_val.ctypes.data,
                                                        out_ids.ctypes.data), _ranges(n, workers)))
    finally:
        torch.set_num_threads(previous)
    return out_val, out_ids
