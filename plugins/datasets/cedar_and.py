"""CEDAR AND: the handwritten word "and" cut from the CEDAR letter, labelled by writer.

Reads three layouts under ``root``:

- the public release (HDL_Forensics / XAI-AND): the image pool
  ``ICFHR_HDL/X-2-All-Data/{TrainingSet,ValidationSet}/*.png`` and
  ``BMVC_XAI/dataset/*-dataset/{TrainingSet,ValidationSet,Junk}/``;
- the SSL-HV layout (Chauhan et al. 2024): ``supervised/{train,test}/<writer>/*.png`` with its
  own writer split, and ``unsupervised/*.png`` for pre-training;
- any other folder tree holding such files (searched recursively).

File names are ``WWWW<doc>_num<k>.png`` (writer = the first four digits; ``Split.documents`` is
``WWWW<doc>``, the writer's copy of the letter the word was cut from). Every file under a
folder named ``Junk`` is a bad crop: its *name* is excluded everywhere, also where the same
name sits in the pool; ``exclude`` adds names of your own. A name found in several folders is
read once (a warning lists names whose copies differ; the first in path order is kept).
Byte-identical images under different names are reported in ``info["byte_duplicates"]`` and on
the console (the release has one filed under two writers). Images become one grey channel
(RGB, RGBA and grey alike), inverted so that ink is bright (SSL-HV's ``1 - x``).

With ``root: null`` the embedded synthetic default is used instead (see
:mod:`hvkit_plugins.datasets.synthetic`), and the run says loudly that these are NOT CEDAR results.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

from hvkit.api import FilePath, Split

from .reading import (HandwritingDataset, byte_duplicates, check_fractions, check_image_params, make_splits,
                      read_images, recipe_check, split_info, split_writers, warn_duplicates)
from .synthetic import synthetic_handwriting

log = logging.getLogger("hvkit.datasets")

NAME = re.compile(r"^(\d{4})([a-z]+)_num(\d+)$")
"""A CEDAR AND file stem: writer (4 digits), document copy (letters), which "and" of the letter."""

SYNTHETIC_NOTE = ("synthetic handwriting (cedar_and without root): these are NOT CEDAR AND results; "
                  "set data.root to the CEDAR AND folder for real ones")


def _scan(root: Path) -> tuple[dict[str, list[Path]], set[str], list[str]]:
    """(CEDAR names -> files, names seen under a ``Junk`` folder, other .png files) below ``root``."""
    found: dict[str, list[Path]] = defaultdict(list)
    junk: set[str] = set()
    other: list[str] = []
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() != ".png" or not path.is_file():
            continue
        if "Junk" in path.relative_to(root).parts[:-1]:
            junk.add(path.stem)
        elif NAME.match(path.stem):
            found[path.stem].append(path)
        else:
            other.append(str(path.relative_to(root)))
    return found, junk, other


def _one_file_per_name(found: dict[str, list[Path]], root: Path) -> tuple[dict[str, Path], list[list[str]]]:
    """Keep one file per name; names whose copies differ in content are returned as conflicts."""
    chosen, conflicts = {}, []
    for name, paths in found.items():
        chosen[name] = paths[0]
        if len(paths) > 1 and len({hashlib.sha1(p.read_bytes()).hexdigest() for p in paths}) > 1:
            conflicts.append([str(p.relative_to(root)) for p in paths])
    return chosen, conflicts


def _sslhv_groups(found: dict[str, list[Path]], base: Path) -> dict[str, dict[str, list[Path]]]:
    """The SSL-HV layout's files by part: supervised ``train`` and ``test``, ``pretrain`` (unsupervised/)."""
    prefixes = {"train": ("supervised", "train"), "test": ("supervised", "test"), "pretrain": ("unsupervised",)}
    groups = {}
    for part, prefix in prefixes.items():
        files = {n: [p for p in ps if p.relative_to(base).parts[:len(prefix)] == prefix] for n, ps in found.items()}
        groups[part] = {n: ps for n, ps in files.items() if ps}
    if not groups["train"] or not groups["test"]:
        raise ValueError(f"cedar_and: {str(base)!r} has supervised/train and supervised/test but no "
                         "images in one of them (expected supervised/<split>/<writer>/*.png)")
    return groups


def _synthetic_default(val_fraction: float, test_fraction: float, image_size: int, channels: int,
                       writers: int | None, samples: int | None, documents: int | None,
                       seed: int) -> HandwritingDataset:
    sized = {k: v for k, v in (("num_writers", writers), ("samples_per_writer", samples),
                               ("documents_per_writer", documents)) if v is not None}
    data = synthetic_handwriting(**sized, image_size=image_size, channels=channels, val_fraction=val_fraction,
                                 test_fraction=test_fraction, seed=seed)
    bar = "!" * 78
    log.warning("\n%s\n!! cedar_and has no root: using the embedded SYNTHETIC handwriting data.\n!! %s\n%s",
                bar, SYNTHETIC_NOTE, bar)
    data.name = "cedar_and"
    data.info.update({"source": "synthetic_handwriting (cedar_and default)", "note": SYNTHETIC_NOTE})
    return data


def _check_settings(root: str | None, val_fraction: float, test_fraction: float, image_size: int, channels: int,
                    synthetic_writers: int | None, synthetic_samples_per_writer: int | None,
                    synthetic_documents: int | None = None) -> None:
    """ValueError for settings no data could serve, the synthetic default's among them when there is no root."""
    check_image_params("cedar_and", image_size, channels)
    check_fractions("cedar_and", val_fraction, test_fraction)
    writers, samples, documents = synthetic_writers, synthetic_samples_per_writer, synthetic_documents
    if root is None and (writers is not None and writers < 2 or samples is not None and samples < 1):
        raise ValueError(f"cedar_and: synthetic_writers={writers} must be at least 2 and "
                         f"synthetic_samples_per_writer={samples} at least 1 (null for the defaults, 300 and 12)")
    if root is None and documents is not None and documents < 0:
        raise ValueError(f"cedar_and: synthetic_documents={documents} must be at least 0 (null or 0: no documents)")
    if root is not None and (writers is not None or samples is not None or documents is not None):
        raise ValueError("cedar_and: synthetic_writers/synthetic_samples_per_writer/synthetic_documents apply only "
                         "without root; remove them or set root: null")


def cedar_and(root: FilePath | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
              exclude: list[str] | None = None, image_size: int = 64, channels: int = 1,
              synthetic_writers: int | None = None, synthetic_samples_per_writer: int | None = None,
              synthetic_documents: int | None = None, seed: int = 0) -> HandwritingDataset:
    """CEDAR AND handwritten "and" images by writer (release, SSL-HV or any folder layout); synthetic if no root.

    Writers are split writer-disjointly with ``seed``: ``test_fraction`` and ``val_fraction`` of
    all writers (defaults 0.2 and 0.1, train gets the remaining 0.7). In the SSL-HV layout its
    own train/test writer split is kept, ``val_fraction`` of its training writers become ``val``
    (0 keeps SSL-HV's training writers whole), and ``unsupervised/`` becomes the ``pretrain``
    split (other folders are ignored there). ``exclude`` lists file names (with or without ``.png``).
    ``synthetic_writers`` / ``synthetic_samples_per_writer`` size the synthetic default (no root only), and
    ``synthetic_documents`` spreads each synthetic writer's words over that many documents (letter copies).
    """
    _check_settings(root, val_fraction, test_fraction, image_size, channels, synthetic_writers,
                    synthetic_samples_per_writer, synthetic_documents)
    if root is None:
        return _synthetic_default(val_fraction, test_fraction, image_size, channels, synthetic_writers,
                                  synthetic_samples_per_writer, synthetic_documents, seed)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ValueError(f"cedar_and: root {str(base)!r} is not a folder; point data.root at the CEDAR AND "
                         "folder, or set it to null for the synthetic default")
    excluded = {Path(e).stem for e in exclude or []}
    sslhv = (base / "supervised" / "train").is_dir() and (base / "supervised" / "test").is_dir()
    found, junk, other = _scan(base)
    for name in junk | excluded:
        found.pop(name, None)
    if not found:
        raise ValueError(f"cedar_and: no CEDAR AND images (WWWW<doc>_num<k>.png) under {str(base)!r}; "
                         "expected the release, the SSL-HV or a folder layout")
    if other:
        log.warning("cedar_and: skipped %d .png files whose names are not WWWW<doc>_num<k>.png, e.g. %s",
                    len(other), other[0])

    def writer_of(path: Path) -> str:
        # in the SSL-HV supervised tree the folder names the writer
        rel = path.relative_to(base).parts
        return rel[2] if sslhv and rel[0] == "supervised" and len(rel) == 4 else path.stem[:4]

    info: dict[str, Any] = {"source": str(base), "synthetic": False, "layout": "sslhv" if sslhv else "folder",
                            "junk_names_excluded": len(junk), "user_excluded": sorted(excluded)}
    groups = _sslhv_groups(found, base) if sslhv else {"all": dict(found)}
    chosen, conflicts = {}, []
    for part, g in groups.items():
        chosen[part], c = _one_file_per_name(g, base)
        conflicts += c
    if conflicts:
        log.warning("cedar_and: %d names have copies with different content (kept the first of each): %s",
                    len(conflicts), "; ".join(" vs ".join(c) for c in conflicts[:3]))
    names = sorted({n for g in chosen.values() for n in g})
    first = {n: next(g[n] for g in chosen.values() if n in g) for n in names}
    images, digests = read_images([first[n] for n in names], image_size, channels, invert=True)
    writers = [writer_of(first[n]) for n in names]
    duplicates = byte_duplicates(names, digests, writers)
    warn_duplicates("cedar_and", duplicates)
    row = {n: i for i, n in enumerate(names)}

    def part_split(part: str, assignment: dict[str, list[str]]) -> dict[str, Split]:
        files = [chosen[part][n] for n in sorted(chosen[part])]
        return make_splits(images[[row[n] for n in sorted(chosen[part])]], [writer_of(p) for p in files],
                           [str(p.relative_to(base)) for p in files], assignment,
                           document_of=[writer_of(p) + NAME.match(p.stem).group(2) for p in files])

    if sslhv:
        train_writers = sorted({writer_of(p) for p in chosen["train"].values()})
        test_writers = sorted({writer_of(p) for p in chosen["test"].values()})
        carve = split_writers("cedar_and", train_writers, val_fraction, 0.0, seed)
        splits = part_split("train", carve)
        splits.update(part_split("test", {"test": test_writers}))
        if chosen["pretrain"]:
            pretrain_writers = sorted({writer_of(p) for p in chosen["pretrain"].values()})
            splits.update(part_split("pretrain", {"pretrain": pretrain_writers}))
            info["pretrain_writers_in_test"] = len(set(pretrain_writers) & set(test_writers))
    else:
        splits = part_split("all", split_writers("cedar_and", writers, val_fraction, test_fraction, seed))
    info.update({"name_conflicts": conflicts, "byte_duplicates": duplicates["groups"],
                 "cross_writer_duplicates": duplicates["cross_writer"], "splits": split_info(splits)})
    return HandwritingDataset("cedar_and", False, splits, info)


cedar_and.check_recipe = recipe_check(_check_settings)
