"""Confidence intervals for verification metrics by resampling writers (a cluster bootstrap)."""

from __future__ import annotations

import numpy as np

from .data import PairSet
from .roc import RocCounts


def writer_bootstrap(pairs: PairSet, threshold: float | None, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, float | int | list[float]]:
    """Percentile intervals of accuracy (at ``threshold``), ROC AUC and EER over resampled writers.

    Pairs are not independent — a writer's pairs share its images — so the unit of resampling
    is the writer (of each pair's first image), as in a cluster bootstrap (Field & Welsh 2007):
    each of ``resamples`` draws picks as many writers as there are, uniformly with replacement,
    and weights every pair by how often its writer was drawn. The interval is the
    ``(1 ± confidence) / 2`` percentiles of the metric over the draws (Efron's percentile
    interval). ``accuracy`` is left out when ``threshold`` is None; draws with no same or no
    different pair are skipped (reported as ``resamples_used``).
    """
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap: resamples={resamples} must be >= 1 and confidence={confidence} in (0, 1)")
    writers, pair_writer = np.unique(pairs.writers, return_inverse=True)
    levels, pair_level = np.unique(pairs.scores, return_inverse=True)
    same = pairs.same.astype(np.float64)
    correct = None if threshold is None else ((pairs.scores >= threshold) == pairs.same).astype(np.float64)
    rng = np.random.default_rng(seed)
    draws: dict[str, list[float]] = {"accuracy": [], "roc_auc": [], "eer": []} if correct is not None else \
        {"roc_auc": [], "eer": []}
    for _ in range(resamples):
        times_drawn = np.bincount(rng.integers(0, len(writers), len(writers)), minlength=len(writers))
        weight = times_drawn[pair_writer].astype(np.float64)
        roc = RocCounts(levels, np.bincount(pair_level, weight * same, len(levels)),
                        np.bincount(pair_level, weight * (1.0 - same), len(levels)))
        if roc.positives == 0 or roc.negatives == 0:
            continue
        draws["roc_auc"].append(roc.auc())
        draws["eer"].append(roc.eer())
        if correct is not None:
            draws["accuracy"].append(float(np.dot(weight, correct) / weight.sum()))
    used = len(draws["roc_auc"])
    if used == 0:
        raise ValueError("bootstrap: no resample held both same-writer and different-writer pairs")
    tail = 100 * (1 - confidence) / 2
    out: dict[str, float | int | list[float]] = {"confidence": confidence, "resamples_used": used}
    for name, values in draws.items():
        out[name] = [float(v) for v in np.percentile(values, [tail, 100 - tail])]
    return out
