"""Open-set writer identification: is a questioned writing by one of the known writers, and by which?"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from hvkit.evaluation import EvalData, PairSet, RocCounts
from hvkit.evaluation.bootstrap import WeightedPairs, check_bootstrap, percentile_intervals, writer_weights
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
        best_known, best_unknown = scores[:len(probes)], scores[len(probes):]
        correct = assigned[:len(probes)] == labels[probes]
        is_known = np.arange(len(scores)) < len(probes)
        out: dict[str, Any] = {"enrolled_writers": len(enrolled), "unknown_writers": len(writers) - len(enrolled),
                               "gallery_images": len(gallery), "known_probes": len(probes),
                               "unknown_probes": len(unknown), "rank1": float(correct.mean()),
                               "detection_auc": RocCounts.from_scores(scores, is_known).auc()}
        out.update(self._rates(best_known, correct, best_unknown))
        if self.bootstrap:
            out["ci"] = self._intervals(best_known, correct, best_unknown, labels[probes], labels[unknown])
        if data.out_dir is not None:
            plot_dir(best_known, correct, best_unknown, data.out_dir / "open_set_dir.png")
        return out

    def _rates(self, known: np.ndarray, correct: np.ndarray, unknown: np.ndarray,
               known_weights: np.ndarray | None = None, unknown_weights: np.ndarray | None = None) -> dict[str, float]:
        return {f"dir_at_far_{far:g}": detection_identification_rate(known, correct, unknown, far, known_weights,
                                                                     unknown_weights) for far in self.far_targets}

    def _intervals(self, known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, known_writers: np.ndarray,
                   unknown_writers: np.ndarray) -> dict[str, Any]:
        """Writer-bootstrap intervals: the enrolled and the unknown writers resampled apart (the gallery kept),
        each probe weighted by how often its writer was drawn."""
        detection = WeightedPairs(PairSet(np.concatenate([known, unknown]), np.arange(len(known) + len(unknown))
                                          < len(known), np.concatenate([known_writers, unknown_writers])), None)
        draws = []
        for wk, wu in zip(writer_weights(known_writers, self.bootstrap, self.seed),
                          writer_weights(unknown_writers, self.bootstrap, self.seed + 1)):
            draws.append({"rank1": float(np.dot(wk, correct) / wk.sum()),
                          "detection_auc": detection.counts(np.concatenate([wk, wu])).auc(),
                          **self._rates(known, correct, unknown, wk, wu)})
        return percentile_intervals(draws, self.confidence)

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


def plot_dir(known: np.ndarray, correct: np.ndarray, unknown: np.ndarray, path: Any) -> None:
    """DIR against the false alarm rate (log axis), one point per unknown-probe score taken as threshold."""
    ranked = np.sort(unknown)[::-1]
    far = np.arange(1, len(ranked) + 1) / len(ranked)
    rate = [np.mean(correct & (known >= t)) for t in ranked]
    figure = new_figure(6.0, 4.0)
    axes = figure.subplots()
    axes.plot(far, rate)
    axes.set(xscale="log", xlim=(1 / len(ranked), 1), ylim=(0, 1.01), xlabel="false alarm rate (unknown writers)",
             ylabel="detection and identification rate", title="open-set writer identification")
    axes.grid(alpha=0.3)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    figure.savefig(path, format="png", dpi=100)
