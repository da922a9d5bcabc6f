"""Embeddings as unit directions about a centre that reads no label: what the set and open-set evaluators score."""

from __future__ import annotations

import numpy as np

from hvkit.evaluation import EvalData


def centre_of(data: EvalData) -> np.ndarray:
    """The mean of the val embeddings (of the test embeddings when there is no val split), float64."""
    return (data.val_embeddings if data.val_embeddings is not None else data.embeddings).mean(axis=0,
                                                                                             dtype=np.float64)


def directions(embeddings: np.ndarray, centre: np.ndarray) -> np.ndarray:
    """``(x − centre) / ‖x − centre‖`` row by row, float64."""
    return unit_rows(np.asarray(embeddings, dtype=np.float64) - centre)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero)."""
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 0, norms, 1.0)
