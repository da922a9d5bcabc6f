"""What an evaluation is given: test embeddings, optional reference and validation sets, verifier scores."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hvkit.index.backend import check_metric


@dataclass
class PairSet:
    """One verifier's scores on one set of pairs; higher = more likely the same writer.

    ``scores`` (P,) float, ``same`` (P,) bool, ``writers`` (P,) int: the writer of each
    pair's first image (for per-writer EER); ``same_document`` (P,) bool, when the data names
    documents: both images come from one document (one sitting, pen and paper).
    """

    scores: np.ndarray
    same: np.ndarray
    writers: np.ndarray
    same_document: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.scores = np.asarray(self.scores, dtype=np.float64)
        self.same = np.asarray(self.same, dtype=bool)
        self.writers = np.asarray(self.writers)
        if self.scores.ndim != 1 or self.same.shape != self.scores.shape or self.writers.shape != self.scores.shape:
            raise ValueError(f"PairSet: scores, same and writers must be 1-D of equal length, got shapes "
                             f"{self.scores.shape}, {self.same.shape}, {self.writers.shape}")
        if self.same_document is not None:
            self.same_document = np.asarray(self.same_document, dtype=bool)
            if self.same_document.shape != self.scores.shape:
                raise ValueError(f"PairSet: same_document must be (P,) beside scores, got shape "
                                 f"{self.same_document.shape}")


@dataclass
class EvalData:
    """Everything an evaluation sees.

    Retrieval is queries (``embeddings``) against ``reference_embeddings`` when given,
    otherwise self-retrieval among the test embeddings. ``verifiers`` maps a verifier's
    name to its ``{"val": PairSet, "test": PairSet}``. ``metric`` ("cosine", "ip" or
    "l2") is how embeddings are compared for kNN and clustering; ``out_dir`` receives
    plots (None: no plots). ``documents`` and ``val_documents``, when the data knows them, give
    each test and val image's source document as an int code (equal codes: one document).
    """

    embeddings: np.ndarray
    labels: np.ndarray
    reference_embeddings: np.ndarray | None = None
    reference_labels: np.ndarray | None = None
    val_embeddings: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    verifiers: dict[str, dict[str, PairSet]] = field(default_factory=dict)
    out_dir: Path | None = None
    device: str = "cpu"
    metric: str = "cosine"
    documents: np.ndarray | None = None
    val_documents: np.ndarray | None = None

    def __post_init__(self) -> None:
        check_metric(self.metric)
        for name in ("", "reference_", "val_"):
            emb, lab = getattr(self, f"{name}embeddings"), getattr(self, f"{name}labels")
            if (emb is None) != (lab is None):
                raise ValueError(f"EvalData: give {name}embeddings and {name}labels together")
            if emb is None:
                continue
            emb, lab = np.asarray(emb, dtype=np.float32), np.asarray(lab)
            if emb.ndim != 2 or lab.shape != (len(emb),):
                raise ValueError(f"EvalData: {name}embeddings must be (N, D) and {name}labels (N,), "
                                 f"got {emb.shape} and {lab.shape}")
            setattr(self, f"{name}embeddings", emb)
            setattr(self, f"{name}labels", lab)
        for name in ("", "val_"):
            documents, labels = getattr(self, f"{name}documents"), getattr(self, f"{name}labels")
            if documents is None:
                continue
            documents = np.asarray(documents)
            if labels is None or documents.shape != labels.shape:
                raise ValueError(f"EvalData: {name}documents must be (N,) beside {name}labels, got shape "
                                 f"{documents.shape}")
            setattr(self, f"{name}documents", documents)
        if self.reference_embeddings is not None and self.reference_embeddings.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"EvalData: reference_embeddings have dimension {self.reference_embeddings.shape[1]}, "
                             f"embeddings {self.embeddings.shape[1]}")
        for verifier, sets in self.verifiers.items():
            if "test" not in sets or not set(sets) <= {"val", "test"}:
                raise ValueError(f"EvalData: verifiers[{verifier!r}] must map 'test' (and optionally 'val') "
                                 f"to PairSets, got keys {sorted(sets)}")
        if self.out_dir is not None:
            self.out_dir = Path(self.out_dir)

    @property
    def self_retrieval(self) -> bool:
        """True when queries are retrieved among the other test embeddings (no reference set)."""
        return self.reference_embeddings is None

    def gallery(self) -> tuple[np.ndarray, np.ndarray]:
        """``(embeddings, labels)`` searched by kNN: the reference set, or the test set itself."""
        if self.self_retrieval:
            return self.embeddings, self.labels
        return self.reference_embeddings, self.reference_labels

    def largest_class_size(self) -> int:
        """The most gallery items any query can match (its own row excluded in self-retrieval): PML's ``max_bin_count``."""
        gallery = self.gallery()[1]
        values, counts = np.unique(gallery, return_counts=True)
        matched = counts[np.isin(values, self.labels)]
        return max(int(matched.max(initial=0)) - int(self.self_retrieval), 0)
