"""Writer verification metrics for every verifier's pair scores, and over all test pairs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from hvkit.evaluation import EvalData, PairSet, RocCounts, cllr, fit_calibration, min_cllr
from hvkit.evaluation.bootstrap import check_bootstrap, writer_bootstrap
from hvkit.evaluation.plots import new_figure


class Verification:
    """Verification: accuracy, ROC AUC, EER, TAR@FAR, precision/recall/F1, per-writer EER, Cllr; ROC/DET/Tippett plots.

    For each verifier of ``data.verifiers`` (scores: higher = same writer; accepted when
    score ≥ threshold): accuracy at the threshold that maximises accuracy on the verifier's
    ``"val"`` pairs (never chosen on test) and at ``fixed_threshold`` (default 0.5, the
    SSL-HV protocol for probability outputs); ROC AUC (Mann–Whitney, ties ½); EER (where
    FAR = FRR on the ROC); TAR at each FAR of ``far_targets`` (default 1e-2, 1e-3);
    precision, recall and F1 of "same" at the val threshold; EER per writer of the pair's
    first image, averaged over writers with both kinds of pairs. Where the pairs say which
    same-writer pairs lie within one document (``PairSet.same_document``), the ROC AUC of those
    alone and of the others alone, each against every different-writer pair
    (``roc_auc_same_document``, ``roc_auc_other_document``, :func:`document_split`).

    Likelihood ratios (:mod:`hvkit.evaluation.calibration`): ``calibration`` ``{slope, offset}``
    maps a score to its natural log LR, fitted by logistic regression on the same val pairs as
    the threshold; ``cllr`` is the log-LR cost (Brümmer & du Preez 2006) of the test pairs' LRs
    under it; ``min_cllr`` the Cllr after the best non-decreasing recalibration of the test
    scores themselves (PAV), the discrimination loss (also without val pairs); ``cllr_cal`` =
    ``cllr`` − ``min_cllr``, the calibration loss. Cllr is 1 for LRs that say nothing, 0 for
    perfect ones.

    With ``all_pairs`` (on by default) every unordered pair of test embeddings is also scored by
    cosine similarity through streamed 2^16-bin histograms (AUC error bound reported). With
    ``bootstrap`` > 0 (default 1,000 draws) each verifier also gets ``ci``: ``confidence``
    intervals of its accuracy, AUC, EER, Cllr and min Cllr from resampling test writers
    (:func:`writer_bootstrap`, the val calibration held fixed, the PAV refitted per draw; ``hvkit compare`` tests the
    difference of two models). ROC/DET curves, score histograms and Tippett plots (with val
    pairs) go to ``out_dir`` as PNG.
    """

    name = "verification"

    def __init__(self, fixed_threshold: float = 0.5, far_targets: list[float] = [1e-2, 1e-3],
                 all_pairs: bool = True, bootstrap: int = 1000, confidence: float = 0.95):
        if not far_targets or not all(0.0 < f < 1.0 for f in far_targets):
            raise ValueError(f"far_targets={far_targets} must be a non-empty list of rates in (0, 1)")
        check_bootstrap(bootstrap, confidence)
        self.fixed_threshold = fixed_threshold
        self.far_targets = list(far_targets)
        self.all_pairs = all_pairs
        self.bootstrap, self.confidence = bootstrap, confidence
        self.requires = frozenset({"all_pairs"} if all_pairs else set())

    def _roc_metrics(self, roc: RocCounts) -> dict[str, float]:
        out = {"roc_auc": roc.auc(), "eer": roc.eer()}
        for far in self.far_targets:
            out[f"tar_at_far_{far:g}"] = roc.tar_at_far(far)
        return out

    def _verifier(self, name: str, sets: dict[str, PairSet], out_dir: Path | None) -> dict[str, Any]:
        test = sets["test"]
        roc = RocCounts.from_scores(test.scores, test.same)
        out: dict[str, Any] = {"pairs": len(test.scores), "same_pairs": int(test.same.sum()), **self._roc_metrics(roc)}
        out["accuracy_at_fixed_threshold"] = float(np.mean((test.scores >= self.fixed_threshold) == test.same))
        out["fixed_threshold"] = self.fixed_threshold
        log_lr = None
        if "val" in sets:
            threshold, val_accuracy = RocCounts.from_scores(sets["val"].scores, sets["val"].same).best_threshold()
            accepted = test.scores >= threshold
            tp = int(np.sum(accepted & test.same))
            precision = tp / max(int(accepted.sum()), 1)
            recall = tp / max(out["same_pairs"], 1)
            out.update(threshold=threshold, val_accuracy=val_accuracy,
                       accuracy=float(np.mean(accepted == test.same)), precision=precision, recall=recall,
                       f1=2 * precision * recall / (precision + recall) if precision + recall else 0.0)
            calibration = fit_calibration(sets["val"].scores, sets["val"].same)
            log_lr = calibration.log_lr(test.scores)
            out.update(cllr=cllr(log_lr, test.same), calibration=calibration.as_dict())
        out["min_cllr"] = min_cllr(test.scores, test.same)
        if log_lr is not None:
            out["cllr_cal"] = out["cllr"] - out["min_cllr"]
        out.update(per_writer_eer(test))
        out.update(document_split(test))
        if self.bootstrap:
            out["ci"] = writer_bootstrap(test, out.get("threshold"), self.bootstrap, self.confidence, log_lr=log_lr)
        if out_dir is not None:
            stem = re.sub(r"[^\w.-]", "_", name)
            plot_roc(roc, out_dir / f"verification_{stem}_roc_det.png", name)
            plot_scores(roc, out_dir / f"verification_{stem}_scores.png", name)
            if log_lr is not None:
                plot_tippett(log_lr, test.same, out_dir / f"verification_{stem}_tippett.png", name,
                             out["cllr"], out["min_cllr"])
        return out

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        if self.all_pairs and "all_pairs" in data.verifiers:
            raise ValueError("verification: a verifier is named 'all_pairs', the key of the all-pairs "
                             "metrics; rename it or set all_pairs: false")
        out = {name: self._verifier(name, sets, data.out_dir) for name, sets in data.verifiers.items()}
        if self.all_pairs and shared.get("all_pairs") is not None:
            roc = RocCounts.from_histogram(shared["all_pairs"])
            out["all_pairs"] = {"pairs": int(roc.positives + roc.negatives), "same_pairs": int(roc.positives),
                                **self._roc_metrics(roc), "roc_auc_error_bound": roc.auc_error_bound()}
            if data.out_dir is not None:
                plot_roc(roc, data.out_dir / "verification_all_pairs_roc_det.png", "all pairs (cosine)")
                plot_scores(roc, data.out_dir / "verification_all_pairs_scores.png", "all pairs (cosine)")
        return out


def document_split(pairs: PairSet) -> dict[str, float | int]:
    """ROC AUC of the same-writer pairs within one document, and of those across two, each against every
    different-writer pair: how much one sitting's pen, paper and scan lend the score. Empty unless the
    pairs say which share a document and both kinds are there."""
    if pairs.same_document is None:
        return {}
    within, across = pairs.same & pairs.same_document, pairs.same & ~pairs.same_document
    if not within.any() or not across.any() or pairs.same.all():
        return {}
    different = ~pairs.same

    def auc(positives: np.ndarray) -> float:
        rows = positives | different
        return RocCounts.from_scores(pairs.scores[rows], pairs.same[rows]).auc()

    return {"same_document_pairs": int(within.sum()), "roc_auc_same_document": auc(within),
            "roc_auc_other_document": auc(across)}


def per_writer_eer(pairs: PairSet) -> dict[str, float | int]:
    """Mean EER over the writers (of the first image) that have both same and different pairs."""
    order = np.argsort(pairs.writers, kind="stable")
    writers, starts = np.unique(pairs.writers[order], return_index=True)
    eers = []
    for rows in np.split(order, starts[1:]):
        same = pairs.same[rows]
        if same.any() and not same.all():
            eers.append(RocCounts.from_scores(pairs.scores[rows], same).eer())
    return {"eer_per_writer": float(np.mean(eers)) if eers else float("nan"), "writers_with_eer": len(eers)}


def plot_roc(roc: RocCounts, path: Path, title: str) -> None:
    """ROC (TAR against FAR, log FAR axis) and DET (FRR against FAR, normal-deviate axes) side by side."""
    from scipy.stats import norm
    far, tar, _ = roc.curve()
    figure = new_figure(9.0, 4.0)
    left, right = figure.subplots(1, 2)
    left.plot(far, tar)
    left.set(xscale="log", xlim=(max(far[far > 0].min(initial=1e-2), 1e-6), 1), ylim=(0, 1.01),
             xlabel="false accept rate", ylabel="true accept rate", title=f"ROC — {title}")
    left.grid(alpha=0.3)
    lo, hi = 5e-5, 0.9
    right.plot(norm.ppf(np.clip(far, lo / 2, 1 - lo)), norm.ppf(np.clip(1 - tar, lo / 2, 1 - lo)))
    ticks = np.array([1e-4, 1e-3, 1e-2, 0.05, 0.2, 0.5, 0.8])
    for axis in (right.xaxis, right.yaxis):
        axis.set_ticks(norm.ppf(ticks), labels=[f"{100 * t:g}%" for t in ticks])
    right.set(xlim=norm.ppf([lo, hi]), ylim=norm.ppf([lo, hi]))
    right.set(xlabel="false accept rate", ylabel="false reject rate", title=f"DET — EER {roc.eer():.4f}")
    right.grid(alpha=0.3)
    figure.subplots_adjust(left=0.08, right=0.98, bottom=0.13, top=0.9, wspace=0.25)  # tight_layout's cost, fixed
    figure.savefig(path, format="png", dpi=100)


def plot_scores(roc: RocCounts, path: Path, title: str, bins: int = 100) -> None:
    """Densities of same-writer and different-writer scores."""
    seen = roc.levels[(roc.same + roc.diff) > 0]
    low, high = seen[0], seen[-1]
    edges = np.linspace(low, high, bins + 1) if high > low else np.linspace(low - 0.5, low + 0.5, bins + 1)
    figure = new_figure(6.0, 4.0)
    axes = figure.subplots()
    for counts, label in ((roc.same, "same writer"), (roc.diff, "different writers")):
        axes.hist(roc.levels, bins=edges, weights=counts, density=True, alpha=0.5, label=label, histtype="stepfilled")
    axes.set(xlabel="score", ylabel="density", title=f"scores — {title}")
    axes.legend()
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    figure.savefig(path, format="png", dpi=100)


def plot_tippett(log_lr: np.ndarray, same: np.ndarray, path: Path, title: str, cost: float, least: float) -> None:
    """Tippett plot: the share of same-writer and of different-writer pairs whose log10 LR exceeds x.

    Read at x = 0: the same-writer curve's shortfall from 1 is the share of same-writer pairs
    with misleading LRs (< 1), the different-writer curve's height the share of misleading
    different-writer ones (> 1). Well-separated curves far from 0 mean strong evidence.
    """
    log10 = np.asarray(log_lr, dtype=np.float64) / np.log(10.0)
    low, high = float(log10.min()), float(log10.max())
    pad = max(0.05 * (high - low), 0.1)
    figure = new_figure(6.0, 4.0)
    axes = figure.subplots()
    for rows, label in ((same, "same writer"), (~same, "different writers")):
        values = np.sort(log10[rows])
        above = 1.0 - np.arange(1, len(values) + 1) / len(values)  # share strictly above each value
        axes.step(np.concatenate([[low - pad], values, [high + pad]]), np.concatenate([[1.0], above, [0.0]]),
                  where="post", label=label)
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set(xlim=(low - pad, high + pad), ylim=(0, 1.01), xlabel="log10 LR", ylabel="share of pairs above",
             title=f"Tippett — {title}\nCllr {cost:.3f} (min {least:.3f})")
    axes.legend()
    axes.grid(alpha=0.3)
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.86)
    figure.savefig(path, format="png", dpi=100)
