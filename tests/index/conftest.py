"""Small clustered embeddings shared by the index tests."""

from __future__ import annotations

import numpy as np
import pytest


def clustered(n: int = 300, dim: int = 16, classes: int = 12, noise: float = 0.8,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 embeddings around ``classes`` random centres, with unequal class sizes."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(classes, n, p=rng.dirichlet(np.full(classes, 3.0)))
    centres = rng.standard_normal((classes, dim))
    return (centres[labels] + noise * rng.standard_normal((n, dim))).astype(np.float32), labels


@pytest.fixture
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


@pytest.fixture
def no_faiss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make hvkit believe FAISS is not installed."""
    from hvkit.index import backend
    monkeypatch.setattr(backend, "faiss_module", lambda: None)
