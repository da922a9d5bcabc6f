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
