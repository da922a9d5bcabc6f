"""Multi-sample verification: several known images against several questioned ones."""

from __future__ import annotations

import hashlib
from typing import Any, Literal

import numpy as np

from hvkit.engine.checkpoint import atomic_write
from hvkit.evaluation import EvalData, PairSet, RocCounts, cllr, fit_calibration, min_cllr
from hvkit.evaluation.bootstrap import check_bootstrap, writer_bootstrap
from hvkit.evaluation.plots import new_figure

from .directions import centre_of, directions, unit_rows


class SetVerification:
    """Verification of k known against k questioned images of a hand, for each k of ``sizes``.

    A document examiner compares a questioned writing with several exemplars, not one word
    with one word; this is that protocol. For each k and each writer with enough images,
    ``trials`` same-writer trials (A, B) are drawn: A and B are disjoint k-sets of the writer's
    images, and — where the data names each image's document (``EvalData.documents``, e.g.
    CEDAR's letter copies) and ``cross_document`` is on — share no document: the questioned
    set B comes from one document (drawn among the writer's documents with k images whose
    other documents hold k more) and the known set A from the writer's other documents. Words
    of one sitting share pen, paper and mood, so same-document pairs flatter a model. Each
    same-writer trial gets one different-writer trial (A, B'), B' k images of another writer
    (from one of its documents), drawn among those who have them, so the trials are balanced
    as SSL-HV's pairs are. A set is scored by its mean direction (``aggregate: direction``):

        s(A, B) = cos(Σ_{a∈A} u_a, Σ_{b∈B} u_b),   u = (x − μ) / ‖x − μ‖,

    μ the mean of the val embeddings (of the test embeddings when there is no val split; no
    label is read); ``mean`` averages the k² cross cosines instead, (1/k²) Σ_a Σ_b u_a · u_b —
    the same direction scaled by how consistent each set is — and ``max`` keeps the closest
    cross pair. Val trials are drawn the same way from the val writers; the threshold is
    the most accurate on them, and their logistic calibration turns test scores into likelihood
    ratios as the ``verification`` evaluator's does. Per k: ``accuracy`` at that threshold, ROC
    AUC, EER, ``cllr`` and ``min_cllr``, the writers and trials used, and with ``bootstrap`` > 0
    writer-resampled ``ci`` (the known set's writer is the unit). A larger k is served by fewer
    writers, those with more images; with ``common_writers`` every k draws its same-writer
    trials from the writers the largest k can serve, so the sizes compare on one set of hands.
    A k that no two writers can serve is reported with ``trials`` 0. A plot of accuracy and AUC
    against k goes to ``out_dir``, and the test trials' scores to :data:`SET_SCORES` there, for
    ``hvkit compare``.
    """

    name = "set_verification"
    requires: frozenset[str] = frozenset()

    def __init__(self, sizes: list[int] = [1, 2, 4], trials: int = 4, cross_document: bool = True,
                 common_writers: bool = False, aggregate: Literal["direction", "mean", "max"] = "direction",
                 bootstrap: int = 1000, confidence: float = 0.95, seed: int = 0):
        if not sizes or any(k < 1 for k in sizes) or len(set(sizes)) != len(sizes):
            raise ValueError(f"sizes={sizes} must be distinct set sizes >= 1")
        if aggregate not in AGGREGATES:
            raise ValueError(f"aggregate={aggregate!r} must be one of {', '.join(AGGREGATES)}")
        if trials < 1:
            raise ValueError(f"trials={trials} must be >= 1 (same-writer trials per writer and size)")
        check_bootstrap(bootstrap, confidence)
        self.sizes = sorted(sizes)
        self.trials, self.cross_document, self.common_writers = trials, cross_document, common_writers
        self.aggregate = aggregate
        self.bootstrap, self.confidence, self.seed = bootstrap, confidence, seed

    def _pairs(self, units: np.ndarray, labels: np.ndarray, documents: np.ndarray | None,
               writers: set[int] | None, k: int, part: str) -> tuple[PairSet, int, str]:
        rng = np.random.default_rng([self.seed, k, int(part == "val")])
        trials = set_trials(labels, documents, k, self.trials, rng, writers)
        pairs = set_scores(units, labels, trials, self.aggregate)
        return pairs, len(np.unique(pairs.writers)), trials_digest(labels, trials)

    def _part(self, embeddings: np.ndarray, labels: np.ndarray, documents: np.ndarray | None,
              centre: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, set[int] | None]:
        """A split's unit rows, labels, documents (None unless ``cross_document``) and, with ``common_writers``,
        the writers the largest size serves, who serve every size."""
        documents = documents if self.cross_document else None
        writers = None
        if self.common_writers:
            largest = set_trials(labels, documents, self.sizes[-1], 1, np.random.default_rng(0))
            writers = {int(labels[known[0]]) for known, _, _ in largest}
        return directions(embeddings, centre), labels, documents, writers

    def __call__(self, data: EvalData, shared: dict[str, Any]) -> dict[str, Any]:
        centre = centre_of(data)
        parts = {"test": self._part(data.embeddings, data.labels, data.documents, centre)}
        if data.val_embeddings is not None:
            parts["val"] = self._part(data.val_embeddings, data.val_labels, data.val_documents, centre)
        out: dict[str, Any] = {"cross_document": self.cross_document and data.documents is not None}
        saved: dict[str, np.ndarray] = {"centre": centre, "aggregate": np.array(self.aggregate)}
        for k in self.sizes:
            found = {part: self._pairs(*values, k, part) for part, values in parts.items()}
            test, writers, digest = found["test"]
            row: dict[str, Any] = {"writers": writers, "trials": len(test.scores)}
            if len(test.scores):
                row.update(self._metrics(test, found.get("val", (None,))[0]))
            out[f"k{k}"] = row
            saved |= {f"k{k}:scores": test.scores, f"k{k}:same": test.same, f"k{k}:writers": test.writers,
                      f"k{k}:digest": np.array(digest)}
        if data.out_dir is not None:
            plot_sizes(out, self.sizes, data.out_dir / "set_verification.png")
            atomic_write(data.out_dir / SET_SCORES, lambda f: np.savez(f, **saved))
        return out

    def _metrics(self, test: PairSet, val: PairSet | None) -> dict[str, Any]:
        roc = RocCounts.from_scores(test.scores, test.same)
        row: dict[str, Any] = {"roc_auc": roc.auc(), "eer": roc.eer(), "min_cllr": min_cllr(test.scores, test.same)}
        threshold = log_lr = None
        if val is not None and len(val.scores):
            threshold, row["val_accuracy"] = RocCounts.from_scores(val.scores, val.same).best_threshold()
            row.update(threshold=threshold, accuracy=float(np.mean((test.scores >= threshold) == test.same)))
            calibration = fit_calibration(val.scores, val.same)
            log_lr = calibration.log_lr(test.scores)
            row.update(cllr=cllr(log_lr, test.same), calibration=calibration.as_dict())
        if self.bootstrap:
            row["ci"] = writer_bootstrap(test, threshold, self.bootstrap, self.confidence, seed=self.seed,
                                         log_lr=log_lr)
        return row


SET_SCORES = "set_verification_scores.npz"
"""Where the test trials' scores go beside the plots, per k (``k<k>:scores``, ``:same``, ``:writers``,
``:digest``), for ``hvkit compare RUN STAGE/set:K …``, with the ``centre`` and ``aggregate`` that
``hvkit verify --known … --questioned …`` scores new images by."""

Trial = tuple[np.ndarray, np.ndarray, bool]
"""(known rows, questioned rows, same writer)."""


def trials_digest(labels: np.ndarray, trials: list[Trial]) -> str:
    """SHA-256 of the labels and of every trial's rows: equal exactly when two evaluations drew the same trials."""
    digest = hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    for known, questioned, same in trials:
        digest.update(np.concatenate([known, questioned, [int(same)]]).astype(np.int64).tobytes())
    return digest.hexdigest()


def set_trials(labels: np.ndarray, documents: np.ndarray | None, k: int, trials: int,
               rng: np.random.Generator, writers: set[int] | None = None) -> list[Trial]:
    """Balanced k-against-k trials over the rows of ``labels``, as :class:`SetVerification` draws them.

    Writers in sorted order; each writer with a feasible draw (and in ``writers``, when given)
    gets ``trials`` same-writer trials, each followed by its different-writer trial, whose
    questioned writer may be any other. With ``documents`` every questioned set comes from one
    document, and a same-writer trial's known set from the writer's other documents.
    """
    order = np.argsort(labels, kind="stable")
    names, starts = np.unique(labels[order], return_index=True)
    rows = dict(zip(names.tolist(), np.split(order, starts[1:])))
    sources = {w: _sources(r, None if documents is None else documents[r], k) for w, r in rows.items()}
    partners = [w for w, found in sources.items() if found]
    out: list[Trial] = []
    for writer, own in rows.items():
        if writers is not None and writer not in writers:
            continue
        others = [w for w in partners if w != writer]
        if documents is None:  # the questioned set from all the writer's rows, the known from the rest
            pools = [(own, own)] if len(own) >= 2 * k else []
        else:  # the questioned set from one document, the known from the writer's others
            pools = [(q, rest) for q in sources[writer] if len(rest := own[~np.isin(own, q)]) >= k]
        if not others or not pools:
            continue
        for _ in range(trials):
            pool, rest = pools[rng.integers(len(pools))]
            questioned = rng.choice(pool, k, replace=False)
            known = rng.choice(rest[~np.isin(rest, questioned)], k, replace=False)
            other = sources[others[rng.integers(len(others))]]
            out += [(known, questioned, True), (known, rng.choice(other[rng.integers(len(other))], k, replace=False),
                                                False)]
    return out


def _sources(rows: np.ndarray, documents: np.ndarray | None, k: int) -> list[np.ndarray]:
    """Where a writer's questioned set may come from: each of its documents with k images, else all its rows."""
    if documents is None:
        return [rows] if len(rows) >= k else []
    names, inverse = np.unique(documents, return_inverse=True)
    return [rows[inverse == d] for d in range(len(names)) if np.sum(inverse == d) >= k]


AGGREGATES = ("direction", "mean", "max")
"""How a trial's two sets are scored from their images' unit rows (see :class:`SetVerification`)."""


def set_scores(units: np.ndarray, labels: np.ndarray, trials: list[Trial], aggregate: str = "direction") -> PairSet:
    """Each trial's score from ``units`` (float64 unit rows) by ``aggregate`` of :data:`AGGREGATES`; the
    known set's writer labels the trial."""
    if not trials:
        return PairSet(np.zeros(0), np.zeros(0, bool), np.zeros(0, labels.dtype))
    if aggregate == "max":
        scores = np.array([(units[a] @ units[b].T).max() for a, b, _ in trials])
    else:
        known = np.stack([units[a].sum(axis=0) for a, _, _ in trials])
        questioned = np.stack([units[b].sum(axis=0) for _, b, _ in trials])
        if aggregate == "direction":
            scores = np.einsum("ij,ij->i", unit_rows(known), unit_rows(questioned))
        else:  # (Σa)·(Σb) / k² is the mean of the k² cross cosines
            scores = np.einsum("ij,ij->i", known, questioned) / np.array([len(a) * len(b) for a, b, _ in trials])
    return PairSet(scores, np.array([s for _, _, s in trials]), labels[[a[0] for a, _, _ in trials]])


def plot_sizes(metrics: dict[str, Any], sizes: list[int], path: Any) -> None:
    """Accuracy (at the val threshold) and ROC AUC against the number of images on each side."""
    figure = new_figure(6.0, 4.0)
    axes = figure.subplots()
    for key, label in (("accuracy", "accuracy (val threshold)"), ("roc_auc", "ROC AUC")):
        shown = [(k, metrics[f"k{k}"][key]) for k in sizes if key in metrics[f"k{k}"]]
        if shown:
            axes.plot(*zip(*shown), marker="o", label=label)
    axes.set(xlabel="images on each side (k)", ylabel="score", xticks=sizes,
             title="k known against k questioned" + (", across documents" if metrics["cross_document"] else ""))
    axes.grid(alpha=0.3)
    axes.legend()
    figure.subplots_adjust(left=0.12, right=0.97, bottom=0.13, top=0.9)
    figure.savefig(path, format="png", dpi=100)
