"""The timing loop the speed benchmarks share: ours and the reference, alternated."""

from __future__ import annotations

import statistics
from typing import Callable


def alternate(ours: Callable[[], float], reference: Callable[[], float], repeats: int,
              warmup: int) -> tuple[float, float]:
    """Median seconds of (ours, reference); each callable times one run and returns its seconds.

    Both warm up first; each repeat runs both, swapping which goes first, so slow drifts of
    a shared machine hit both alike.
    """
    for _ in range(warmup):
        ours()
        reference()
    times: dict[str, list[float]] = {"ours": [], "reference": []}
    for r in range(repeats):
        order = (("ours", ours), ("reference", reference))
        for key, run in order if r % 2 == 0 else reversed(order):
            times[key].append(run())
    return statistics.median(times["ours"]), statistics.median(times["reference"])
