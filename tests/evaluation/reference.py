"""Reference computations the evaluation tests compare with (scikit-learn based)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_curve


def sklearn_eer(same: np.ndarray, scores: np.ndarray) -> float:
    """EER on sklearn's ROC points: where FNR - FPR changes sign, interpolated linearly."""
    fpr, tpr, _ = roc_curve(same, scores)
    gap = (1 - tpr) - fpr
    i = int(np.argmax(gap <= 0))
    if gap[i] == 0:
        return float(fpr[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + t * (fpr[i] - fpr[i - 1]))


def sklearn_tar_at_far(same: np.ndarray, scores: np.ndarray, far: float) -> float:
    fpr, tpr, _ = roc_curve(same, scores, drop_intermediate=False)
    return float(tpr[fpr <= far].max())


def clustered(n: int = 400, dim: int = 16, classes: int = 12, noise: float = 1.0,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 embeddings around ``classes`` random centres, with unequal class sizes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n, p=rng.dirichlet(np.full(classes, 3.0)))
    centres = rng.standard_normal((classes, dim))
    return (centres[labels] + noise * rng.standard_normal((n, dim))).astype(np.float32), labels


def fit_calibration_before_fusion(scores: np.ndarray, same: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """hvkit's one-score calibration as it was before fusion generalised it (commit 431976e), verbatim but for the
    input checks: ``(slope, offset)``. ``fit_calibration`` and one-column ``fit_fusion`` must equal it bit for bit."""
    from scipy.special import expit

    scores, same = np.asarray(scores, dtype=np.float64), np.asarray(same, dtype=bool)
    n_same, n_diff = float(same.sum()), float((~same).sum())
    target = np.where(same, (n_same + 1) / (n_same + 2), 1 / (n_diff + 2))
    weight = np.where(same, 0.5 / n_same, 0.5 / n_diff)
    prior = float(np.dot(weight, target))
    prior_log_odds = float(np.log(prior) - np.log1p(-prior))
    if scores.min() == scores.max():
        return 0.0, 0.0
    centre, spread = float(np.mean(scores)), float(np.std(scores))
    x = (scores - centre) / spread

    def loss(p: np.ndarray) -> float:
        z = p[0] * x + p[1]
        return float(np.dot(weight, target * np.logaddexp(0.0, -z) + (1 - target) * np.logaddexp(0.0, z)))

    params = np.zeros(2)
    current = loss(params)
    for _ in range(max_iter):
        z = params[0] * x + params[1]
        p = expit(z)
        residual, curvature = weight * (p - target), weight * p * (1 - p)
        gradient = np.array([np.dot(residual, x), residual.sum()])
        hessian = np.array([[np.dot(curvature, x * x), np.dot(curvature, x)],
                            [np.dot(curvature, x), curvature.sum()]])
        step = np.linalg.solve(hessian, gradient)
        size = 1.0
        while True:
            trial = params - size * step
            value = loss(trial)
            if value <= current - 1e-4 * size * float(np.dot(gradient, step)) or size < 1e-10:
                break
            size /= 2
        params, current = trial, value
        if np.max(np.abs(size * step)) < 1e-12 or np.max(np.abs(gradient)) < 1e-15:
            break
    else:
        raise ValueError("did not converge")
    a, b = params
    return float(a / spread), float(b - a * centre / spread - prior_log_odds)
