"""Open-set writer identification: is a questioned writing by one of the known writers, and by which?"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import numpy as np

from hvkit.engine.checkpoint import atomic_write
from hvkit.evaluation import EvalData, PairSet
from hvkit.evaluation.bootstrap import (WeightedPairs, check_bootstrap, paired_intervals, percentile_intervals,
                                       writer_weights)
from hvkit.evaluation.plots import new_figure

from .directions import centre_of, directions, unit_rows
from .linear_probe import writer_split


class OpenSet:
    """Open-set identification (Phillips, Grother & Micheals 2011; ISO/IEC 19795-1): a gallery of known
    writers, and probes by known and by unknown writers.

    A seeded ``enrolled_fraction`` of the test writers with two or more images is enrolled: a
    ``gallery_fraction`` of each one's images (:func:`~.linear_probe.writer_split`) forms the
    gallery, the rest are probes of known writers; every image of the other test writers is a
    probe of an unknown writer. A probe's score for a writer is the cosine between its direction
    and the writer's template — the mean direction of the writer's gallery images (``match:
    mean``) or, with ``match: nearest``, the nearest of them — directions being the embeddings
    centred on the val images' mean (the test images' without val) and scaled to unit length. The
    probe is assigned its best-scoring writer and accepted when that score exceeds a threshold τ.

    For each ``far`` of ``far_targets``, τ is the lowest threshold at which at most that share of
    unknown-writer probes is accepted (the false alarm rate), and ``dir_at_far_<far>`` is the
    detection and identification rate there: the share of known-writer probes accepted *and*
    assigned their own writer. ``rank1`` is the closed-set rate (τ = −∞), ``detection_auc`` the ROC
    AUC of the best score telling known-writer probes from unknown ones, identity aside. With
    ``bootstrap`` > 0 (1,000 draws) each comes with ``ci``: ``confidence`` intervals from resampling
    the enrolled and the unknown writers apart, each probe weighted by its writer's draws, the
    gallery held fixed. The curve of DIR against the false alarm rate goes to ``out_dir``.
    """

    name = "open_set"
    requires: frozenset[str] = frozenset()

    def __init__(self, enrolled_fraction: float = 0.5, gallery_fraction: float = 0.5,
                 match: Literal["mean", "nearest"] = "mean", far_targets: list[float] = [0.01, 0.1],
                 bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0):
        for key, value in (("enrolled_fraction", enrolled_fraction), ("gallery_fraction", gallery_fraction)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"{key}={value} must be in (0, 1)")
        if match not in ("mean", "nearest"):
            raise ValueError(f"match={match!r} must be 'mean' or 'nearest'")
        if not far_targets or not all(0.0 <= f < 1.0 for f in far_targets):
            raise ValueError(f"far_targets={far_targets} must be a non-empty list of rates in [0, 1)")
        check_bootstrap(bootstrap, confidence)
        self.enrolled_fraction, self.gallery_fraction = enrolled_fraction, gallery_fraction
        self.match, self.far_targets, self.seed = match, list(far_targets), seed
        self.bootstrap, self.confidence = bootstrap, confidence

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        units = directions(data.embeddings, centre_of(data))
        labels = data.labels
        writers, counts = np.unique(labels, return_counts=True)
        rng = np.random.default_rng(self.seed)
        eligible = writers[counts >= 2]
        enrolled = np.sort(rng.choice(eligible, int(round(self.enrolled_fraction * len(eligible))), replace=False))
        if len(enrolled) < 2 or len(enrolled) == len(writers):
            return {"skipped": True, "enrolled_writers": int(len(enrolled)), "writers": int(len(writers))}
        known = np.flatnonzero(np.isin(labels, enrolled))
        gallery, probes = (known[rows] for rows in writer_split(labels[known], self.gallery_fraction, self.seed))
        unknown = np.flatnonzero(~np.isin(labels, enrolled))
        scores, assigned = self._best(units, labels, gallery, np.concatenate([probes, unknown]))
        found = Probes(scores[:len(probes)], assigned[:len(probes)] == labels[probes], scores[len(probes):],
                       labels[probes], labels[unknown])
        out: dict[str, Any] = {"enrolled_writers": len(enrolled), "unknown_writers": len(writers) - len(enrolled),
                               "gallery_images": len(gallery), "known_probes": len(probes),
                               "unknown_probes": len(unknown), **found.metrics(self.far_targets)}
        if self.bootstrap:
            out["ci"] = percentile_intervals(
                [found.metrics(self.far_targets, wk, wu) for wk, wu in found.weights(self.bootstrap, self.seed)],
                self.confidence)
        if data.out_dir is not None:
            plot_dir(found, data.out_dir / "open_set_dir.png")
            digest = probes_digest(labels, gallery, probes, unknown)
            atomic_write(data.out_dir / OPEN_SET_SCORES,
                         lambda f: np.savez(f, **found.arrays(), far_targets=np.array(self.far_targets),
                                            digest=np.array(digest)))
        return out

    def _best(self, units: np.ndarray, labels: np.ndarray, gallery: np.ndarray,
              probes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Each probe's best score over the gallery writers, and that writer."""
        names, inverse = np.unique(labels[gallery], return_inverse=True)
        if self.match == "mean":
            templates = unit_rows(np.stack([units[gallery[inverse == w]].sum(axis=0) for w in range(len(names))]))
            per_writer = units[probes] @ templates.T
        else:
            similarity = units[probes] @ units[gallery].T
            per_writer = np.stack([similarity[:, inverse == w].max(axis=1) for w in range(len(names))], axis=1)
        best = per_writer.argmax(axis=1)
        return per_writer[np.arange(len(probes)), best], names[best]


OPEN_SET_SCORES = "open_set_scores.npz"
"""Where the probes' best scores go beside the plots (:meth:`Probes.arrays`, with ``far_targets`` and the
draw's ``digest``), for ``hvkit compare RUN STAGE/open_set …``."""


@dataclass(frozen=True)
class Probes:
    """One gallery's probes: each known-writer probe's best score (``known``) and whether that best writer is
    its own (``correct``), each unknown-writer probe's best score (``unknown``), and every probe's writer."""

    known: np.ndarray
    correct: np.ndarray
    unknown: np.ndarray
    known_writers: np.ndarray
    unknown_writers: np.ndarray

    @classmethod
    def load(cls, saved: Any) -> "Probes":
        """From :meth:`arrays` as saved (an ``np.load`` of :data:`OPEN_SET_SCORES`)."""
        return cls(*(np.asarray(saved[name]) for name in cls.__dataclass_fields__))

    def arrays(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @cached_property
    def _detection(self) -> WeightedPairs:
        scores = np.concatenate([self.known, self.unknown])
        is_known = np.arange(len(scores)) < len(self.known)
        return WeightedPairs(PairSet(scores, is_known, np.concatenate([self.known_writers, self.unknown_writers])),
                             None)

    def metrics(self, far_targets: list[float], known_weights: np.ndarray | None = None,
                unknown_weights: np.ndarray | None = None) -> dict[str, float]:
        """``rank1``, ``detection_auc`` and ``dir_at_far_<far>`` for each of ``far_targets``, each probe
        counted its weight's times (a bootstrap draw's; once each by default)."""
        wk = np.ones(len(self.known)) if known_weights is None else known_weights
        wu = np.ones(len(self.unknown)) if unknown_weights is None else unknown_weights
        out = {"rank1": float(np.dot(wk, self.correct) / wk.sum()),
               "detection_auc": self._detection.counts(np.concatenate([wk, wu])).auc()}
        out.update({f"dir_at_far_{far:g}": detection_identification_rate(self.known, self.correct, self.unknown,
                                                                         far, wk, wu) for far in far_targets})
        return out

    def weights(self, resamples: int, seed: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(known, unknown)`` probe weights of each of ``resamples`` writer-bootstrap draws: the enrolled and
        the unknown writers resampled apart, the gallery held fixed."""
        return zip(writer_weights(self.known_writers, resamples, seed),
                   writer_weights(self.unknown_writers, resamples, seed + 1))


def paired_probes_bootstrap(a: Sequence[Probes], b: Sequence[Probes], far_targets: list[float],
                            resamples: int = 1000, confidence: float = 0.95,
                            seed: int = 0) -> dict[str, float | int | list[float]]:
    """Intervals of the differences metric(A) − metric(B) of :meth:`Probes.metrics`, A and B the same probes
    scored by two models (one :class:`Probes` per training run a side).

    Each draw resamples the enrolled and the unknown writers (:meth:`Probes.weights`) and weights both sides'
    probes alike, so what they share — the test writers' difficulty — cancels (a paired bootstrap, as
    :func:`~hvkit.evaluation.bootstrap.seeded_paired_bootstrap` for pairs). With several runs a side each draw
    also resamples each side's runs, with replacement, and takes the mean over those picked;
    ``estimate_<metric>`` is then the difference of the runs' means. ``share_a_not_better_<metric>`` is the
    share of draws where A is not higher: a one-sided bootstrap p-value for "A beats B"."""
    check_bootstrap(resamples, confidence)
    if not a or not b:
        raise ValueError("paired bootstrap: each side needs at least one run")
    reference = a[0]
    for run in (*a, *b):
        if not (np.array_equal(run.known_writers, reference.known_writers)
                and np.array_equal(run.unknown_writers, reference.unknown_writers)):
            raise ValueError("paired bootstrap: every run must hold the same probes (same writers)")
    runs = np.random.default_rng([seed, 1])

    def mean_over(side: Sequence[Probes], wk: np.ndarray | None, wu: np.ndarray | None) -> dict[str, float]:
        found = [run.metrics(far_targets, wk, wu) for run in side]
        return {name: float(np.mean([f[name] for f in found])) for name in found[0]}

    draws = []
    for wk, wu in reference.weights(resamples, seed):
        picked = [side if len(side) == 1 else [side[i] for i in runs.integers(0, len(side), len(side))]
                  for side in (a, b)]
        found_a, found_b = (mean_over(side, wk, wu) for side in picked)
        draws.append({name: found_a[name] - found_b[name] for name in found_a})
    out = paired_intervals(draws, confidence)
    if len(a) > 1 or len(b) > 1:
        whole_a, whole_b = mean_over(a, None, None), mean_over(b, None, None)
        out["runs"] = [len(a), len(b)]
        out.update({f"estimate_{name}": whole_a[name] - whole_b[name] for name in whole_a})
    return out


def probes_digest(labels: np.ndarray, gallery: np.ndarray, probes: np.ndarray, unknown: np.ndarray) -> str:
    """SHA-256 of the labels and of the gallery's, the known and the unknown probes' rows: equal exactly when
    two evaluations drew the same gallery and probes."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for rows in (gallery, probes, unknown):
        digest.update(np.int64(len(rows)).tobytes() + np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    return digest.hexdigest()


def detection_identification_rate(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, far: float,
                                   known_weights: np.ndarray | None = None,
                                   unknown_weights: np.ndarray | None = None) -> float:
    """DIR at the lowest threshold τ whose false alarm rate, the share of ``unknown`` scores above τ, is at
    most ``far`` < 1 — an unknown probe's score: the share of known-writer probes whose best score is above τ
    and whose writer is right. Weights (a bootstrap draw's) count each probe that many times."""
    known_weights = np.ones(len(known)) if known_weights is None else known_weights
    unknown_weights = np.ones(len(unknown)) if unknown_weights is None else unknown_weights
    values, level = np.unique(unknown, return_inverse=True)
    weight = np.bincount(level, unknown_weights, len(values))[::-1]  # each score's weight, highest first
    above = np.cumsum(weight) - weight  # the weight strictly above each score
    threshold = values[::-1][np.flatnonzero(above <= far * unknown_weights.sum() + 1e-9)[-1]]
    return float(np.dot(known_weights, correct & (known > threshold)) / known_weights.sum())


def plot_dir(found: Probes, path: Any) -> None:
    """DIR against the false alarm rate (log axis), one point per unknown-probe score taken as threshold."""
    ranked = np.sort(found.unknown)[::-1]
    far = np.arange(1, len(ranked) + 1) / len(ranked)
    rate = [np.mean(found.correct & (found.known >= t)) for t in ranked]
    figure = new_figure(6.0, 4.0)
    axes = figure.subplots()
    axes.plot(far, rate)
    axes.set(xscale="log", xlim=(1 / len(ranked), 1), ylim=(0, 1.01), xlabel="false alarm rate (unknown writers)",
             ylabel="detection and identification rate", title="open-set writer identification")
    axes.grid(alpha=0.3)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    figure.savefig(path, format="png", dpi=100)
