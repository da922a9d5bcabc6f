"""Which two images make each saved pair: kept beside the pair scores, so that errors can be looked at."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hvkit.api import Split, WriterDataset


@dataclass(frozen=True)
class PairIndex:
    """The rows of the split each pair joins (``first``, ``second``) and each row's image ``files``: absolute
    paths where the dataset read them from disk, else the dataset's names for them (a synthetic image's)."""

    first: np.ndarray
    second: np.ndarray
    files: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays :func:`load_pair_index` reads back, for ``np.savez``."""
        return {"first": self.first, "second": self.second, "files": self.files}


def pair_index(data: WriterDataset, split: Split, first: np.ndarray, second: np.ndarray) -> PairIndex:
    """The pairs ``(first[k], second[k])`` of ``split`` with its files, found under the dataset's ``source``."""
    source = data.info.get("source")
    root = Path(str(source)) if source and not data.synthetic else None
    files = list(split.paths)
    if root is not None and root.is_dir():
        files = [str((root / f).resolve()) if (root / f).is_file() else f for f in files]
    return PairIndex(np.asarray(first, dtype=np.int64), np.asarray(second, dtype=np.int64),
                     np.asarray(files, dtype=str))


def load_pair_index(path: Path) -> PairIndex | None:
    """The :class:`PairIndex` saved with a split's pair scores; None for files written before hvkit kept it."""
    with np.load(path) as saved:
        if "first" not in saved.files:
            return None
        return PairIndex(saved["first"], saved["second"], saved["files"])
