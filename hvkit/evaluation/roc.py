"""ROC statistics from same/different pair counts per score level.

One representation serves exact scores (a level per distinct score) and streamed
histograms (a level per bin), so both give ROC AUC, EER and TAR@FAR by the same code.
A pair is accepted as "same writer" when its score is at least the threshold.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hvkit.index import ScoreHistogram, auc_tie_bound


@dataclass(frozen=True)
class RocCounts:
    """``same[l]`` and ``diff[l]`` pairs have score level ``levels[l]`` (ascending).

    For a histogram, ``levels`` are the bins' lower edges: accepting bin ``l`` and above
    is exactly the threshold ``levels[l]``.
    """

    levels: np.ndarray
    same: np.ndarray
    diff: np.ndarray

    @classmethod
    def from_scores(cls, scores: np.ndarray, same: np.ndarray) -> "RocCounts":
        """Exact counts: one level per distinct score."""
        scores = np.asarray(scores, dtype=np.float64)
        same = np.asarray(same, dtype=bool)
        if scores.ndim != 1 or same.shape != scores.shape:
            raise ValueError(f"scores and same must be 1-D of equal length, got {scores.shape} and {same.shape}")
        if not np.isfinite(scores).all():
            raise ValueError("scores contain NaN or infinite values")
        levels, inverse = np.unique(scores, return_inverse=True)
        return cls(levels, np.bincount(inverse, weights=same, minlength=len(levels)),
                   np.bincount(inverse, weights=~same, minlength=len(levels)))

    @classmethod
    def from_histogram(cls, hist: ScoreHistogram) -> "RocCounts":
        """Counts per bin of a streamed histogram (levels = lower bin edges)."""
        return cls(hist.edges[:-1], hist.same.astype(np.float64), hist.diff.astype(np.float64))

    @property
    def positives(self) -> float:
        return float(self.same.sum())

    @property
    def negatives(self) -> float:
        return float(self.diff.sum())

    def _check(self) -> None:
        if self.positives == 0 or self.negatives == 0:
            raise ValueError(f"ROC statistics need both same and different pairs; got {self.positives:.0f} "
                             f"same and {self.negatives:.0f} different")

    def auc(self) -> float:
        """ROC AUC = P(same score > different score) + ½ P(equal) (Mann–Whitney), as sklearn's roc_auc_score."""
        self._check()
        below = np.cumsum(self.diff) - self.diff
        return float(np.sum(self.same * (below + 0.5 * self.diff)) / (self.positives * self.negatives))

    def auc_error_bound(self) -> float:
        """Largest possible gap between :meth:`auc` and the AUC of the scores that were binned.

        ``½ Σ_l same[l]·diff[l] / (P·N)`` (:func:`hvkit.index.auc_tie_bound`). For smooth
        score densities that is about ``½ · w · ∫ p_same p_diff`` with ``w`` the bin width
        (3.05e-5 for 2^16 bins over [-1, 1]), i.e. below 1e-5 for typical cosine scores; 0
        for exact levels.
        """
        self._check()
        return auc_tie_bound(self.same, self.diff)

    def curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(far, tar, thresholds)``, from threshold +inf (accept nothing) down to the lowest level."""
        self._check()
        tar = np.concatenate([[0.0], np.cumsum(self.same[::-1]) / self.positives])
        far = np.concatenate([[0.0], np.cumsum(self.diff[::-1]) / self.negatives])
        return far, tar, np.concatenate([[np.inf], self.levels[::-1]])

    def eer(self) -> float:
        """Equal error rate: where the false-accept rate meets the false-reject rate (1 − TAR).

        Taken on the ROC polyline, interpolating linearly between its two points around
        the crossing (sklearn's ``roc_curve`` points give the same value). For a histogram
        it is exact at the bin edges, so its error is at most the share of same or
        different pairs in the one bin where the rates cross.
        """
        far, tar, _ = self.curve()
        gap = (1.0 - tar) - far  # decreasing from 1 to -1
        i = int(np.argmax(gap <= 0))
        if gap[i] == 0:
            return float(far[i])
        t = gap[i - 1] / (gap[i - 1] - gap[i])
        return float(far[i - 1] + t * (far[i] - far[i - 1]))

    def tar_at_far(self, far_target: float) -> float:
        """Highest true-accept rate at a threshold whose false-accept rate is at most ``far_target``."""
        far, tar, _ = self.curve()
        return float(tar[far <= far_target].max())

    def best_threshold(self) -> tuple[float, float]:
        """``(threshold, accuracy)`` maximising accuracy; the threshold lies midway between two levels."""
        self._check()
        accepted_same = np.cumsum(self.same[::-1])[::-1]  # threshold at levels[l]: levels >= l accepted
        rejected_diff = np.cumsum(self.diff) - self.diff
        correct = np.append(accepted_same + rejected_diff, self.negatives)  # last: accept nothing
        best = int(np.argmax(correct))
        if best == 0:
            threshold = float(self.levels[0])
        elif best == len(self.levels):
            threshold = float(np.nextafter(self.levels[-1], np.inf))
        else:
            threshold = float((self.levels[best - 1] + self.levels[best]) / 2)
        return threshold, float(correct[best] / (self.positives + self.negatives))
