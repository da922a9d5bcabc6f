"""Confidence intervals for verification metrics by resampling writers (a cluster bootstrap)."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Iterator, Sequence

import numpy as np

from .calibration import cllr_terms, min_cllr_of_counts
from .data import PairSet
from .roc import RocCounts


class WeightedPairs:
    """Accuracy (at a threshold), ROC AUC, EER and Cllr (of given log LRs) of one pair set under per-pair weights."""

    def __init__(self, pairs: PairSet, threshold: float | None, log_lr: np.ndarray | None = None):
        self.levels, self.level = np.unique(pairs.scores, return_inverse=True)
        self.same = pairs.same.astype(np.float64)
        self.correct = None if threshold is None else ((pairs.scores >= threshold) == pairs.same).astype(np.float64)
        self.cost = None if log_lr is None else cllr_terms(log_lr, pairs.same)

    def counts(self, weight: np.ndarray) -> RocCounts:
        """The weighted same- and different-writer pairs at each score level."""
        return RocCounts(self.levels, np.bincount(self.level, weight * self.same, len(self.levels)),
                         np.bincount(self.level, weight * (1.0 - self.same), len(self.levels)))

    def min_cllr(self, weights: Sequence[np.ndarray]) -> np.ndarray:
        """min Cllr under each of several weightings, the PAV refits batched (:func:`min_cllr_of_counts`)."""
        counts = [self.counts(w) for w in weights]
        return min_cllr_of_counts(np.stack([c.same for c in counts]), np.stack([c.diff for c in counts]))

    def __call__(self, weight: np.ndarray) -> dict[str, float] | None:
        """The metrics, or None when the weighted pairs lack same or different ones."""
        roc = self.counts(weight)
        if roc.positives == 0 or roc.negatives == 0:
            return None
        out = {"roc_auc": roc.auc(), "eer": roc.eer()}
        if self.correct is not None:
            out["accuracy"] = float(np.dot(weight, self.correct) / weight.sum())
        if self.cost is not None:
            same, diff = weight * self.same, weight * (1.0 - self.same)
            out["cllr"] = float(0.5 * (np.dot(same, self.cost) / same.sum() + np.dot(diff, self.cost) / diff.sum()))
        return out


def writer_weights(writers: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Per-item weights of each of ``resamples`` draws: how often the item's writer was drawn, as many
    draws as ``writers`` holds writers, uniformly with replacement (a cluster bootstrap's weights)."""
    ids, index = np.unique(writers, return_inverse=True)
    rng = np.random.default_rng(seed)
    for _ in range(resamples):
        yield np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))[index].astype(np.float64)


def _chunks(items: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    """``items`` in consecutive lists of ``size`` (the last may be shorter)."""
    while chunk := list(itertools.islice(items, size)):
        yield chunk


def percentile_intervals(draws: list[dict[str, float]], confidence: float) -> dict[str, float | int | list[float]]:
    """Each metric's ``(1 ± confidence) / 2`` percentiles over the draws (Efron's percentile interval),
    with ``confidence`` and ``resamples_used``."""
    if not draws:
        raise ValueError("bootstrap: no resample held both same-writer and different-writer pairs")
    tail = 100 * (1 - confidence) / 2
    out: dict[str, float | int | list[float]] = {"confidence": confidence, "resamples_used": len(draws)}
    for name in draws[0]:
        out[name] = [float(v) for v in np.percentile([d[name] for d in draws], [tail, 100 - tail])]
    return out


def paired_intervals(draws: list[dict[str, float]], confidence: float,
                     lower_is_better: Collection[str] = ()) -> dict[str, float | int | list[float]]:
    """:func:`percentile_intervals` of draws of differences A − B, with ``share_a_not_better_<metric>``: the
    share of draws in which A is not better (not higher; not lower for ``lower_is_better``), a one-sided
    bootstrap p-value for "A beats B"."""
    out = percentile_intervals(draws, confidence)
    for name in draws[0]:
        worse = [(d[name] >= 0) if name in lower_is_better else (d[name] <= 0) for d in draws]
        out[f"share_a_not_better_{name}"] = float(np.mean(worse))
    return out


def check_bootstrap(bootstrap: int, confidence: float) -> None:
    """An evaluator's interval settings: ValueError unless ``bootstrap`` >= 0 (0: no intervals) and
    ``confidence`` in (0, 1)."""
    if bootstrap < 0 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap={bootstrap} must be >= 0 (0: no intervals) and confidence={confidence} "
                         "in (0, 1)")


def _check(resamples: int, confidence: float) -> None:
    if resamples < 1 or not 0.0 < confidence < 1.0:
        raise ValueError(f"bootstrap: resamples={resamples} must be >= 1 and confidence={confidence} in (0, 1)")


def writer_bootstrap(pairs: PairSet, threshold: float | None, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0, log_lr: np.ndarray | None = None,
                     chunk: int = 250) -> dict[str, float | int | list[float]]:
    """Percentile intervals of accuracy (at ``threshold``), ROC AUC, EER, Cllr and min Cllr over resampled writers.

    Pairs are not independent — a writer's pairs share its images — so the unit of resampling
    is the writer (of each pair's first image), as in a cluster bootstrap (Field & Welsh 2007):
    each of ``resamples`` draws picks as many writers as there are, uniformly with replacement,
    and weights every pair by how often its writer was drawn. The interval is the
    ``(1 ± confidence) / 2`` percentiles of the metric over the draws (Efron's percentile
    interval). ``accuracy`` is left out when ``threshold`` is None, ``cllr`` when ``log_lr`` (the
    pairs' natural log LRs from a calibration fitted elsewhere, held fixed) is None; draws with
    no same or no different pair are skipped (reported as ``resamples_used``). ``min_cllr`` refits
    the PAV recalibration in every draw (:func:`min_cllr_of_counts`, ``chunk`` draws at a time).
    """
    _check(resamples, confidence)
    metrics = WeightedPairs(pairs, threshold, log_lr)
    draws: list[dict[str, float]] = []
    for weights in _chunks(writer_weights(pairs.writers, resamples, seed), chunk):
        kept = [(w, found) for w in weights if (found := metrics(w)) is not None]
        if kept:
            for (_, found), value in zip(kept, metrics.min_cllr([w for w, _ in kept])):
                draws.append({**found, "min_cllr": float(value)})
    return percentile_intervals(draws, confidence)


def paired_writer_bootstrap(a: PairSet, b: PairSet, threshold_a: float | None, threshold_b: float | None,
                            resamples: int = 1000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, float | int | list[float]]:
    """Intervals of the differences metric(a) − metric(b) of two verifiers scored on the same pairs.

    Both are resampled with the same writers in every draw (a paired bootstrap), so what the
    two share — the test writers' difficulty — cancels and the interval is far narrower than
    the two separate intervals suggest. Besides the intervals, ``share_a_not_better_<metric>``
    is the fraction of draws in which ``a`` is not better (accuracy and AUC not higher, EER not
    lower): a one-sided bootstrap p-value for "a beats b". ``accuracy`` needs both thresholds.
    """
    return seeded_paired_bootstrap([(a, threshold_a)], [(b, threshold_b)], resamples, confidence, seed)


Run = tuple[PairSet, float | None] | tuple[PairSet, float | None, np.ndarray | None]
"""One training run's test pairs, val threshold and, optionally, the pairs' natural log LRs (a val calibration)."""


def seeded_paired_bootstrap(a: Sequence[Run], b: Sequence[Run], resamples: int = 1000, confidence: float = 0.95,
                            seed: int = 0, chunk: int = 250) -> dict[str, float | int | list[float]]:
    """:func:`paired_writer_bootstrap` over several training runs (seeds) of each side.

    ``a`` and ``b`` hold one ``(pairs, threshold)`` or ``(pairs, threshold, log_lr)`` per training
    run, all scored on the same test pairs; ``accuracy`` needs every threshold, ``cllr`` every
    run's log LRs; ``min_cllr`` refits each run's PAV in every draw (``chunk`` draws batched).
    Lower is better for ``eer``, ``cllr`` and ``min_cllr``.

    A two-level (hierarchical) bootstrap, the test writers and the training runs
    being the two independent sources of noise: each draw resamples the writers (shared by
    every run, as in the paired bootstrap) and, independently for each side, as many runs as
    it has, with replacement; the draw's difference is the mean metric over A's drawn runs
    minus the mean over B's. With one run a side this is the paired writer bootstrap, draw for
    draw. With few runs the between-run spread is underestimated by the factor
    ``(runs - 1) / runs`` in variance (the plain bootstrap's bias; Davison & Hinkley 1997,
    section 3.8): with three seeds a side, the interval is a lower bound on the uncertainty.
    ``estimate_<metric>`` is the difference of the runs' mean metrics on all writers.
    """
    _check(resamples, confidence)
    if not a or not b:
        raise ValueError("paired bootstrap: each side needs at least one run")
    reference = a[0][0]
    for pairs, *_ in (*a, *b):
        if not (np.array_equal(pairs.same, reference.same) and np.array_equal(pairs.writers, reference.writers)):
            raise ValueError("paired bootstrap: every run must hold the same pairs (same labels and writers)")
    with_accuracy = all(run[1] is not None for run in (*a, *b))
    with_cllr = all(len(run) > 2 and run[2] is not None for run in (*a, *b))
    sides = [[WeightedPairs(run[0], run[1] if with_accuracy else None, run[2] if with_cllr else None) for run in side]
             for side in (a, b)]
    runs = np.random.default_rng([seed, 1])

    def mean_over(metrics: list[WeightedPairs], picks: np.ndarray, weight: np.ndarray) -> dict[str, float] | None:
        values = [metrics[k](weight) for k in picks]
        if values[0] is None:
            return None
        return {name: float(np.mean([v[name] for v in values])) for name in values[0]}

    draws: list[dict[str, float]] = []
    for weights in _chunks(writer_weights(reference.writers, resamples, seed), chunk):
        kept = []  # (writer weights, runs picked per side, A − B) of the draws holding both kinds of pair
        for weight in weights:
            picks = [np.arange(len(s)) if len(s) == 1 else runs.integers(0, len(s), len(s)) for s in sides]
            ma = mean_over(sides[0], picks[0], weight)
            if ma is not None:
                mb = mean_over(sides[1], picks[1], weight)
                kept.append((weight, picks, {name: ma[name] - mb[name] for name in ma}))
        if kept:  # each run's min Cllr in these draws, then each draw's mean over the runs it picked
            found = [[m.min_cllr([w for w, _, _ in kept]) for m in side] for side in sides]
            for j, (_, picks, draw) in enumerate(kept):
                means = [np.mean([values[k][j] for k in pick]) for values, pick in zip(found, picks)]
                draws.append({**draw, "min_cllr": float(means[0] - means[1])})
    out = paired_intervals(draws, confidence, ("eer", "cllr", "min_cllr"))
    if len(a) > 1 or len(b) > 1:
        everyone = np.ones(len(reference.writers))
        whole = [mean_over(s, np.arange(len(s)), everyone) for s in sides]
        for side, found in zip(sides, whole):
            found["min_cllr"] = float(np.mean([m.min_cllr([everyone])[0] for m in side]))
        out["runs"] = [len(a), len(b)]
        for name in draws[0]:
            out[f"estimate_{name}"] = whole[0][name] - whole[1][name]
    return out
