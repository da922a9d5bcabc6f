"""What the margin-miner tests share: random labelled batches and comparing mined indices."""

from __future__ import annotations

from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile


def random_batch(seed: int, b: int = 24, d: int = 8, classes: int = 5,
                 dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """(b, d) Gaussian embeddings of uneven norms and ``classes`` random labels, one batch per seed."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, dtype=dtype) * (0.5 + torch.rand(b, 1, generator=g, dtype=dtype))
    return x, torch.randint(classes, (b,), generator=g)


def random_reference(seed: int, rows: int = 30, d: int = 8, classes: int = 5,
                     dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """A reference set (ref_emb, ref_labels) of another size than ``random_batch``'s, drawn apart from it."""
    return random_batch(1000 + seed, b=rows, d=d, classes=classes, dtype=dtype)


def rows(indices: tuple[torch.Tensor, ...]) -> list[tuple[int, ...]]:
    """Triplets as (a, p, n) rows, or pairs (a1, p, a2, n) as the positive rows then the negative ones."""
    if len(indices) == 3:
        return list(zip(*(t.tolist() for t in indices)))
    a1, p, a2, n = (t.tolist() for t in indices)
    return list(zip(a1, p)) + [("neg", a, b) for a, b in zip(a2, n)]


def assert_same_indices(ours: tuple[torch.Tensor, ...], pml: tuple[torch.Tensor, ...]) -> None:
    """The same tuples in the same order and dtype (int64), and not none at all, so the check can fail."""
    assert len(ours) == len(pml)
    assert len(ours[0]) > 0 and len(ours[-1]) > 0
    for a, b in zip(ours, pml):
        assert a.dtype == torch.int64
        assert torch.equal(a, b), (rows(ours), rows(pml))


def largest_allocation(call: Callable[[], object]) -> int:
    """Bytes of the largest CPU allocation any one operator makes during ``call()``, by torch's profiler."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        call()
    return max(event.cpu_memory_usage for event in prof.events())
