"""Scores to likelihood ratios, and the log-likelihood-ratio cost Cllr.

A forensic comparison reports its evidence as a likelihood ratio
``LR(s) = p(s | same writer) / p(s | different writers)``: how many times more probable the
score ``s`` is if one writer wrote both images than if two did. It is independent of the prior
odds, which the court supplies (posterior odds = LR × prior odds). Log LRs here are natural
logarithms unless a name says log10.

Cllr (Brümmer & du Preez 2006, "Application-independent evaluation of speaker detection",
Computer Speech & Language 20) measures LRs in bits:
``Cllr = ½ [mean_same log2(1 + 1/LR) + mean_diff log2(1 + LR)]``. A system that always says
LR = 1 scores exactly 1, perfect LRs (∞ for same, 0 for different) score 0, and misleading
confident LRs cost without bound. Its minimum over every non-decreasing recalibration of the
scores (``min Cllr``, found by the pool-adjacent-violators algorithm) is the loss due to
discrimination; ``Cllr − min Cllr`` is the loss due to calibration.

Calibration (:func:`fit_calibration`) maps one score to a log LR; fusion (:func:`fit_fusion`)
maps several systems' scores of the same pairs to one, ``Σ_k w_k s_k + b``. Both are one
prior-weighted logistic regression, fitted by one Newton solver.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from .roc import RocCounts

_LN2 = float(np.log(2.0))


@dataclass(frozen=True)
class Calibration:
    """The affine map of a score to its natural log LR: ``log LR(s) = slope · s + offset``."""

    slope: float
    offset: float

    def log_lr(self, scores: np.ndarray | float) -> np.ndarray:
        """Natural log LRs of ``scores`` (float64)."""
        return self.slope * np.asarray(scores, dtype=np.float64) + self.offset

    def as_dict(self) -> dict[str, float]:
        """``{"slope": …, "offset": …}``, as stored in ``metrics.json`` and ``verifiers.pt``."""
        return {"slope": float(self.slope), "offset": float(self.offset)}


def _check_same(same: np.ndarray, what: str) -> None:
    positives = int(same.sum())
    if positives == 0 or positives == len(same):
        raise ValueError(f"{what} needs both same-writer and different-writer pairs; got {positives} same "
                         f"and {len(same) - positives} different")


def _check_pairs(scores: np.ndarray, same: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    if scores.ndim != 1 or same.shape != scores.shape:
        raise ValueError(f"{what}: scores and same must be 1-D of equal length, got {scores.shape} and {same.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores contain NaN or infinite values")
    _check_same(same, what)
    return scores, same


def _check_columns(scores: np.ndarray, what: str) -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] == 0:
        raise ValueError(f"{what}: scores must be (pairs, systems), got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{what}: scores contain NaN or infinite values")
    return scores


def fit_calibration(scores: np.ndarray, same: np.ndarray, max_iter: int = 100) -> Calibration:
    """Linear logistic-regression calibration of scores to log LRs (float64, Newton's method).

    Fits ``z = a·s + b`` by minimising the prior-weighted cross-entropy
    ``½ mean_same ℓ(z, t₊) + ½ mean_diff ℓ(z, t₋)``, ``ℓ(z, t) = t softplus(−z) + (1−t) softplus(z)``;
    with targets t₊ = 1, t₋ = 0 that is the Cllr of the calibrated scores (times ln 2), as
    Brümmer's FoCal/BOSARIS toolkits and Morrison's "Tutorial on logistic-regression calibration
    and fusion" (Australian Journal of Forensic Sciences 45, 2013) do. Each class weighs ½
    whatever its count, so the fit does not depend on the share of same-writer pairs and ``z`` is
    a log LR, not log posterior odds. With balanced pairs it is exactly plain (unweighted)
    logistic regression on the same targets, whose log prior odds are then 0; with unbalanced
    ones it is still the affine map of least Cllr (up to the smoothing below), which plain
    regression minus the log prior odds is not.

    The targets follow Platt ("Probabilistic outputs for support vector machines", 1999):
    ``t₊ = (N₊ + 1)/(N₊ + 2)`` instead of 1 and ``t₋ = 1/(N₋ + 2)`` instead of 0 (Laplace's rule
    of succession). Without them perfectly separated pairs have no finite fit; with them the fit
    is always finite, its largest LRs growing with the number of pairs that support them, and it
    differs from the unsmoothed one by O(1/N). The returned map subtracts the log prior odds of
    the weighted targets, ``logit(½ t₊ + ½ t₋)`` (0 when N₊ = N₋, as in the SSL-HV pair protocol),
    so ``log LR = a·s + b − logit(½ t₊ + ½ t₋)``: scores whose mean is the same for both classes
    (constant ones included) get slope 0 and LR exactly 1.

    It is :func:`fit_fusion` of one system, by the same Newton solver.
    Raises ``ValueError`` (one line) for non-finite scores or pairs of one kind only.
    """
    scores, same = _check_pairs(scores, same, "calibration")
    (slope,), offset = _fit_linear(scores[:, None], same, "calibration", max_iter)
    return Calibration(slope=slope, offset=offset)


@dataclass(frozen=True)
class LinearFusion:
    """K systems' scores fused into one natural log LR: ``log LR(s) = Σ_k w_k s_k + offset``.

    ``weights`` apply to the raw scores, so they depend on each system's scale; ``weights[k] ·
    std(s_k)`` compares the systems. :func:`fit_fusion` fits it; :class:`Calibration` is the K = 1 case.
    """

    weights: tuple[float, ...]
    offset: float

    def log_lr(self, scores: np.ndarray) -> np.ndarray:
        """Natural log LRs (float64, (N,)) of ``scores`` (N, K), one column per system."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.ndim != 2 or scores.shape[1] != len(self.weights):
            raise ValueError(f"fusion: scores must be (pairs, {len(self.weights)}), got shape {scores.shape}")
        return scores @ np.asarray(self.weights, dtype=np.float64) + self.offset

    def as_dict(self) -> dict[str, list[float] | float]:
        """``{"weights": […], "offset": …}``."""
        return {"weights": [float(w) for w in self.weights], "offset": float(self.offset)}


def cosine_fusion_space(blocks: list[np.ndarray], weights: list[float] | tuple[float, ...]) -> np.ndarray:
    """Rows whose inner products are ``Σ_k w_k cos(a_k, b_k)``: a linear fusion of cosine systems, offset aside.

    ``blocks[k]`` (N, D_k) holds the rows whose cosine system k scores (e.g. a cosine verifier's
    ``W(e − μ)``). Since ``w cos(a, b) = <√w â, √w b̂>`` (â = a / |a|), the rows
    ``[√w_1 b̂_1, …, √w_K b̂_K]`` (float64, (N, Σ D_k)) turn the fused score into an inner product —
    a kNN index or a retrieval evaluation then ranks by the fusion itself. Needs every ``w_k ≥ 0``:
    ``ValueError`` names the first that is not.
    """
    if len(blocks) != len(weights) or not blocks:
        raise ValueError(f"cosine fusion space: {len(blocks)} blocks for {len(weights)} weights")
    negative = [k for k, w in enumerate(weights) if not w >= 0]
    if negative:
        raise ValueError(f"cosine fusion space: system {negative[0]} has weight {weights[negative[0]]:.4g} < 0, "
                         "which no inner product can carry")
    scaled = []
    for block, weight in zip(blocks, weights):
        block = np.asarray(block, dtype=np.float64)
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        scaled.append(np.sqrt(weight) * block / np.maximum(norms, np.finfo(np.float64).tiny))
    return np.concatenate(scaled, axis=1)


def fit_fusion(scores: np.ndarray, same: np.ndarray, max_iter: int = 100, l2: float = 0.0) -> LinearFusion:
    """Linear logistic-regression fusion of K systems' scores (N, K) into one log LR (float64, Newton's method).

    ``log LR = Σ_k w_k s_k + b``, fitted exactly as :func:`fit_calibration` fits one score —
    prior-weighted cross-entropy (each class ½), Platt's smoothed targets, the weighted targets'
    log prior odds subtracted from the offset — so the fused LRs are the affine combination of
    least (smoothed) Cllr on these pairs. This is the fusion of Pigeon, Druyts & Verlinde
    ("Applying logistic regression to the fusion of the NIST'99 1-speaker submissions", Digital
    Signal Processing 10, 2000) in the prior-weighted form of Brümmer et al. ("Fusion of
    heterogeneous speaker recognition systems in the STBU submission for the NIST SRE 2006", IEEE
    TASLP 15, 2007) and the FoCal toolkit. Unregularised, it is equivariant to any affine rescaling
    of a system's scores (the fused LRs do not change), so standardising them is left to the
    solver. A constant column gets weight 0; columns that are affine functions of each other leave
    the weights undetermined and raise ``ValueError``, as do non-finite scores and pairs of one
    kind only.

    ``l2 > 0`` adds the ridge penalty ``½ l2 Σ_k (w_k σ_k)²`` on the weights per standard deviation
    (σ_k the column's deviation on these pairs, so the fit stays equivariant to rescaling a
    system): near-collinear systems — models trained on the same writers — then share their weight
    instead of taking large opposite ones, and exactly collinear ones are allowed (equal columns get
    equal weights). It shrinks the fused log LRs towards 0, so calibrate them again when ``l2`` is
    large against the cross-entropy (whose value is ~0.3-0.7 nats).
    """
    scores = _check_columns(scores, "fusion")
    same = np.asarray(same, dtype=bool)
    if same.shape != scores.shape[:1]:
        raise ValueError(f"fusion: same must have one entry per row of scores, got {same.shape} and {scores.shape}")
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"fusion: l2={l2} must be a finite number >= 0")
    _check_same(same, "fusion")
    weights, offset = _fit_linear(scores, same, "fusion", max_iter, l2)
    return LinearFusion(weights=tuple(weights), offset=offset)


def mean_fusion(scores: np.ndarray) -> LinearFusion:
    """The unweighted mean of K systems' z-scores, ``(1/K) Σ_k (s_k − μ_k)/σ_k``, μ_k, σ_k from ``scores`` (N, K).

    The baseline of score fusion with no labels: every system weighs the same per standard
    deviation. Its output is not a log LR; calibrate it (:func:`fit_calibration`) to get one.
    Raises ``ValueError`` when a column is constant or not finite.
    """
    scores = _check_columns(scores, "mean fusion")
    centre, spread = scores.mean(0), scores.std(0)
    constant = [k for k in range(scores.shape[1]) if scores[:, k].min() == scores[:, k].max()]
    if constant:
        raise ValueError(f"mean fusion: column {constant[0]} of the scores is constant; it cannot be z-scored")
    k = scores.shape[1]
    return LinearFusion(weights=tuple(float(w) for w in 1.0 / (k * spread)),
                        offset=float(-np.sum(centre / spread) / k))


def _fit_linear(scores: np.ndarray, same: np.ndarray, what: str, max_iter: int,
                l2: float = 0.0) -> tuple[list[float], float]:
    """Newton core of :func:`fit_calibration` and :func:`fit_fusion`: weights and offset of ``log LR = Σ w_k s_k + b``.

    ``scores`` (N, K) are finite float64, ``same`` has pairs of both kinds. Each varying column is
    standardised (a well-conditioned Newton system), the prior-weighted smoothed cross-entropy plus
    ``½ l2 ‖standardised weights‖²`` is minimised by Newton steps with Armijo backtracking, and the
    result is mapped back to the raw scores; a constant column keeps weight 0.
    """
    n_same, n_diff = float(same.sum()), float((~same).sum())
    target = np.where(same, (n_same + 1) / (n_same + 2), 1 / (n_diff + 2))
    weight = np.where(same, 0.5 / n_same, 0.5 / n_diff)
    prior = float(np.dot(weight, target))  # the weighted targets' mean
    prior_log_odds = float(np.log(prior) - np.log1p(-prior))
    weights = [0.0] * scores.shape[1]
    # constant columns keep weight 0 (tested by min = max: np.std of equal floats need not be 0)
    varying = [k for k in range(scores.shape[1]) if scores[:, k].min() != scores[:, k].max()]
    if not varying:
        return weights, 0.0
    centre, spread = scores[:, varying].mean(0), scores[:, varying].std(0)
    x = np.column_stack([(scores[:, varying] - centre) / spread, np.ones(len(scores))])  # standardised, then 1
    for n in range(1, len(varying) if l2 == 0 else 0):
        if np.linalg.matrix_rank(x[:, :n + 1]) <= n:
            earlier = f"column {varying[0]}" if n == 1 else f"columns {', '.join(map(str, varying[:n]))}"
            raise ValueError(f"{what}: score column {varying[n]} is an affine function of {earlier} on these pairs, "
                             "so the weights are not determined; drop it")

    ridge = np.full(x.shape[1], float(l2))
    ridge[-1] = 0.0  # the offset is not penalised

    def loss(p: np.ndarray) -> float:
        z = x @ p
        cross_entropy = np.dot(weight, target * np.logaddexp(0.0, -z) + (1 - target) * np.logaddexp(0.0, z))
        return float(cross_entropy + 0.5 * np.dot(ridge, p * p))

    params = np.zeros(x.shape[1])
    current = loss(params)
    for _ in range(max_iter):
        p = expit(x @ params)
        gradient = x.T @ (weight * (p - target)) + ridge * params
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + np.diag(ridge)
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while True:  # backtracking (Armijo) keeps every step a descent
            trial = params - size * step
            value = loss(trial)
            if value <= current - 1e-4 * size * float(np.dot(gradient, step)) or size < 1e-10:
                break
            size /= 2
        params, current = trial, value
        if np.max(np.abs(size * step)) < 1e-12 or np.max(np.abs(gradient)) < 1e-15:
            break
    else:
        raise ValueError(f"{what}: logistic regression did not converge in {max_iter} Newton steps")
    raw = params[:-1] / spread
    for k, w in zip(varying, raw):
        weights[k] = float(w)
    return weights, float(params[-1] - np.dot(raw, centre) - prior_log_odds)


def cllr_terms(log_lr: np.ndarray, same: np.ndarray) -> np.ndarray:
    """Each pair's cost in bits: ``log2(1 + 1/LR)`` for same-writer, ``log2(1 + LR)`` for different-writer pairs.

    Computed as ``softplus(∓ log LR) / ln 2``, exact for LRs of 0 and ∞ on the side they are
    right (cost 0) and ∞ on the side they are wrong.
    """
    log_lr, same = np.asarray(log_lr, dtype=np.float64), np.asarray(same, dtype=bool)
    return np.logaddexp(0.0, np.where(same, -log_lr, log_lr)) / _LN2


def cllr(log_lr: np.ndarray, same: np.ndarray) -> float:
    """Log-likelihood-ratio cost ``½ [mean_same log2(1 + 1/LR) + mean_diff log2(1 + LR)]`` of natural log LRs.

    Brümmer & du Preez (2006). Each class weighs ½ whatever its count; LR = 1 everywhere gives 1.
    """
    log_lr, same = np.asarray(log_lr, dtype=np.float64), np.asarray(same, dtype=bool)
    if log_lr.ndim != 1 or same.shape != log_lr.shape:
        raise ValueError(f"cllr: log_lr and same must be 1-D of equal length, got {log_lr.shape} and {same.shape}")
    if np.isnan(log_lr).any():
        raise ValueError("cllr: log_lr contains NaN")
    if same.all() or not same.any():
        raise ValueError(f"cllr needs both same-writer and different-writer pairs; got {int(same.sum())} same "
                         f"and {int((~same).sum())} different")
    cost = cllr_terms(log_lr, same)
    return float(0.5 * (cost[same].mean() + cost[~same].mean()))


def pav_log_lr(scores: np.ndarray, same: np.ndarray) -> np.ndarray:
    """The optimal non-decreasing recalibration of ``scores`` to natural log LRs, by pool-adjacent-violators.

    Isotonic regression of the labels (1 same, 0 different) on the scores gives the posterior
    ``P`` of "same" that no other non-decreasing function of the score beats under any proper
    scoring rule; Brümmer & du Preez (2006) convert it with the pairs' own prior odds,
    ``log LR = logit(P) − log(N₊/N₋)``, and the resulting LRs are then optimal for Cllr at every
    prior. Tied scores are pooled first (a function of the score cannot split them; BOSARIS's
    stable sort instead puts different-writer pairs first among ties, an optimistic split: the
    two agree without ties). A block of only different-writer pairs gets −∞ and one of only
    same-writer pairs +∞ — never charged, as :func:`cllr_terms` costs them 0.
    """
    scores, same = _check_pairs(scores, same, "min_cllr")
    counts = RocCounts.from_scores(scores, same)  # one level per distinct score, ascending
    # Stack-based PAV over the levels: each block holds its same and total counts.
    block_same: list[float] = []
    block_total: list[float] = []
    block_levels: list[int] = []
    for k_same, k_total in zip(counts.same, counts.same + counts.diff):
        s, t, n = float(k_same), float(k_total), 1
        while block_same and block_same[-1] * t >= s * block_total[-1]:  # previous mean ≥ this one: pool
            s, t, n = s + block_same.pop(), t + block_total.pop(), n + block_levels.pop()
        block_same.append(s)
        block_total.append(t)
        block_levels.append(n)
    bs, bt = np.array(block_same), np.array(block_total)
    with np.errstate(divide="ignore"):
        block_llr = np.log(bs) - np.log(bt - bs) - np.log(counts.positives / counts.negatives)
    level_llr = np.repeat(block_llr, block_levels)
    return level_llr[np.searchsorted(counts.levels, scores)]


def min_cllr_of_counts(same: np.ndarray, diff: np.ndarray) -> np.ndarray:
    """min Cllr of R weighted pair sets at once, from their same- and different-writer weight at each score level.

    ``same`` and ``diff`` (R, L) hold, for each set, the (non-negative) weight of same-writer and of
    different-writer pairs at each of L distinct score levels, ascending — e.g. one writer-bootstrap
    draw per row. Each row is recalibrated by pool-adjacent-violators (as :func:`pav_log_lr`) and
    its Cllr returned (R,), every row advancing level by level together, so the Python loop runs
    over levels, not over rows × levels. A run of adjacent levels holding one kind of pair in every
    row is pooled first, which is exact: an isotonic fit gives equal values to adjacent levels of
    equal mean (the last level of a block lies at or below its mean, the first of the next at or
    above). A row whose weights lack same or different pairs gets NaN.
    """
    same, diff = np.asarray(same, dtype=np.float64), np.asarray(diff, dtype=np.float64)
    if same.ndim != 2 or same.shape != diff.shape:
        raise ValueError(f"min_cllr_of_counts: same and diff must be (sets, levels) of equal shape, got "
                         f"{same.shape} and {diff.shape}")
    kind = np.where(~diff.any(0), 1, np.where(~same.any(0), 0, 2))  # 1 same pairs only, 0 different only, 2 both
    starts = np.flatnonzero(np.r_[True, (kind[1:] != kind[:-1]) | (kind[1:] == 2)]) if kind.size else np.empty(0, int)
    same, total = np.add.reduceat(same, starts, axis=1), np.add.reduceat(same + diff, starts, axis=1)
    rows, n = np.arange(len(same)), same.shape[1]
    block_same, block_total = np.zeros((len(same), n)), np.zeros((len(same), n))
    depth = np.zeros(len(same), dtype=np.int64)
    for level in range(n):
        block_same[rows, depth], block_total[rows, depth] = same[:, level], total[:, level]
        depth += 1
        while True:  # pool the top two blocks of each row whose means decrease (or tie)
            r = rows[depth >= 2]
            top = depth[r] - 1
            pool = block_same[r, top - 1] * block_total[r, top] >= block_same[r, top] * block_total[r, top - 1]
            r, top = r[pool], top[pool]
            if not len(r):
                break
            block_same[r, top - 1] += block_same[r, top]
            block_total[r, top - 1] += block_total[r, top]
            depth[r] -= 1
    kept = np.arange(n)[None, :] < depth[:, None]
    b_same, b_diff = np.where(kept, block_same, 0.0), np.where(kept, block_total - block_same, 0.0)
    positives, negatives = b_same.sum(1), b_diff.sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_lr = np.log(b_same) - np.log(b_diff) - np.log(positives / negatives)[:, None]
        cost_same = np.where(b_same > 0, b_same * np.logaddexp(0.0, -log_lr), 0.0).sum(1)
        cost_diff = np.where(b_diff > 0, b_diff * np.logaddexp(0.0, log_lr), 0.0).sum(1)
        out = 0.5 * (cost_same / positives + cost_diff / negatives) / _LN2
    return np.where((positives > 0) & (negatives > 0), out, np.nan)


def min_cllr(scores: np.ndarray, same: np.ndarray) -> float:
    """Cllr after the optimal non-decreasing recalibration (:func:`pav_log_lr`): the discrimination loss.

    Invariant to any strictly increasing transform of the scores; 0 for perfectly separated
    pairs, 1 for scores that do not separate them at all, and never above 1.
    """
    return cllr(pav_log_lr(scores, same), same)
