"""IAM Handwriting Database (Marti & Bunke, IJDAR 5:39-46, 2002): word, line or form images by writer.

Reads the release as unpacked under ``root`` (nothing is ever downloaded):

- images: ``words/a01/a01-000u/a01-000u-00-00.png`` (``level: words``),
  ``lines/a01/a01-000u/a01-000u-00.png`` (``lines``) or ``formsA-D/a01-000u.png``,
  ``formsE-H/``, ``formsI-Z/`` (``forms``; any ``forms*/`` folder);
- ``ascii/forms.txt``: ``a01-000u 000 2 prt 7 5 52 36`` = form id, writer id, sentences, word
  segmentation, lines, lines segmented, words, words segmented; ``#`` starts a comment. The
  writer is in no file name, so this file is required and a malformed line is an error;
- ``ascii/words.txt`` / ``ascii/lines.txt``: ``a01-000u-00-00 ok 154 1 408 768 27 51 AT A`` —
  the id and the segmentation result, ``ok`` or ``err`` (the header spells it ``er``; both are
  read as "bad"). ``segmentation: ok`` (default, as most papers) drops ``err`` crops and crops
  the file does not list; ``all`` keeps every image and does not need the file;
- ``largeWriterIndependentTextLineRecognitionTask/{trainset,validationset1,validationset2,testset}.txt``
  (one line id a line) for ``split: standard``: each writer goes to the set that lists its
  lines (the task's sets are writer-disjoint; validation 1 and 2 become ``val``), with all its
  images of the chosen level; unlisted writers are left out.

Confirmed against the headers of ``forms.txt``, ``words.txt`` and ``lines.txt`` as quoted by
public IAM readers (e.g. the Keras handwriting-recognition example, the-full-stack's text
recognizer, SimpleHTR), which also name the two empty word images of the release,
``a01-117-05-02`` and ``r06-022-03-05``: unreadable or empty images are skipped with a warning.

Crops are not square: ``image_size`` [H, W] (default per level: words 64 x 256, lines
64 x 1024, forms 512 x 362) fits each image inside with its aspect ratio kept, centred and padded
with paper (:func:`reading.fit_and_pad`); an int S means S x S. Images become one grey channel,
inverted (``invert``) so that ink is bright, as CEDAR AND. Each image's document
(``Split.documents``) is its form.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch

from hvkit.api import FilePath

from .reading import (HandwritingDataset, byte_duplicates, check_fractions, decode_image, make_splits,
                      recipe_check, split_info, split_writers, warn_duplicates)

log = logging.getLogger("hvkit.datasets")

LEVELS = {"words": (64, 256), "lines": (64, 1024), "forms": (512, 362)}
"""The image levels and their default [H, W]."""
EXAMPLES = {"words": "words/a01/a01-000u/a01-000u-00-00.png", "lines": "lines/a01/a01-000u/a01-000u-00.png",
            "forms": "formsA-D/a01-000u.png"}
"""Where each level's images lie in the release."""
FORM_ID = re.compile(r"^[a-z]\d\d-\d+[a-z]?$")
"""An IAM form id, e.g. ``a01-000u``."""
STANDARD_DIR = "largeWriterIndependentTextLineRecognitionTask"
STANDARD_FILES = {"train": ("trainset.txt",), "val": ("validationset1.txt", "validationset2.txt"),
                  "test": ("testset.txt",)}
KNOWN_EMPTY = ("a01-117-05-02", "r06-022-03-05")


def form_of(image_id: str) -> str:
    """The form id of a word, line or form id: ``a01-000u-00-00`` -> ``a01-000u``."""
    return "-".join(image_id.split("-")[:2])


def _ascii_file(base: Path, name: str) -> Path:
    """``root/ascii/<name>``, or ``root/<name>`` where the ascii files were unpacked flat."""
    flat = base / name
    return flat if not (base / "ascii" / name).exists() and flat.exists() else base / "ascii" / name


def _records(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, fields) of each non-comment, non-blank line of an IAM ascii file."""
    text = path.read_text(encoding="utf-8", errors="replace")
    return [(i, line.split()) for i, line in enumerate(text.splitlines(), 1)
            if line.strip() and not line.lstrip().startswith("#")]


def read_forms(path: Path) -> dict[str, str]:
    """``ascii/forms.txt`` -> {form id: writer id}; a missing file or malformed line is a ValueError."""
    if not path.is_file():
        raise ValueError(f"iam: {str(path)!r} not found; IAM's writers come only from ascii/forms.txt "
                         "(unpack ascii.tgz under root)")
    writers = {}
    for number, fields in _records(path):
        if len(fields) < 2 or not FORM_ID.match(fields[0]) or not fields[1].isdigit():
            raise ValueError(f"iam: {path}:{number}: malformed line {' '.join(fields)!r}; expected "
                             "'a01-000u 000 2 prt 7 5 52 36' (form id, writer id, ...)")
        writers[fields[0]] = fields[1]
    if not writers:
        raise ValueError(f"iam: {str(path)!r} lists no forms")
    return writers


def read_segmentation(path: Path) -> dict[str, bool]:
    """``ascii/words.txt`` or ``ascii/lines.txt`` -> {id: segmentation ok}; malformed lines are a ValueError."""
    if not path.is_file():
        raise ValueError(f"iam: {str(path)!r} not found; segmentation: ok needs it (or set segmentation: all)")
    status = {}
    for number, fields in _records(path):
        if len(fields) < 2 or fields[1] not in ("ok", "err", "er"):
            raise ValueError(f"iam: {path}:{number}: malformed line {' '.join(fields)!r}; expected "
                             "'<id> ok|err ...' as 'a01-000u-00-00 ok 154 1 408 768 27 51 AT A'")
        status[fields[0]] = fields[1] == "ok"
    return status


def _image_files(base: Path, level: str) -> list[Path]:
    """The level's .png files under ``root``, sorted."""
    folders = sorted(p for p in base.glob("forms*") if p.is_dir()) if level == "forms" else [base / level]
    files = sorted(p for folder in folders for p in folder.rglob("*.png") if p.is_file())
    if not files:
        raise ValueError(f"iam: no {level} images under {str(base)!r} (expected {EXAMPLES[level]})")
    return files


def standard_writers(base: Path, writer_of_form: dict[str, str]) -> dict[str, list[str]]:
    """Writers of each set of the Large Writer Independent Text Line Recognition Task (train, val, test)."""
    folder = base / STANDARD_DIR if (base / STANDARD_DIR).is_dir() else base
    missing = [n for names in STANDARD_FILES.values() for n in names if not (folder / n).is_file()]
    if missing:
        raise ValueError(f"iam: split: standard needs {', '.join(missing)} under {str(base / STANDARD_DIR)!r} "
                         "(the Large Writer Independent Text Line Recognition Task); use split: random")
    sets: dict[str, set[str]] = {}
    for part, names in STANDARD_FILES.items():
        ids = [w for n in names for w in (folder / n).read_text().split()]
        sets[part] = {writer_of_form[form_of(i)] for i in ids if form_of(i) in writer_of_form}
    shared = sorted((sets["train"] & sets["val"]) | (sets["train"] & sets["test"]) | (sets["val"] & sets["test"]))
    if shared:
        raise ValueError(f"iam: the standard split files put writers {', '.join(shared[:5])} in several sets; "
                         "use split: random")
    return {part: sorted(writers) for part, writers in sets.items()}


def _cap(names: list[str], writer_of: dict[str, str], max_per_writer: int, seed: int) -> list[str]:
    """At most ``max_per_writer`` names per writer, drawn with ``numpy.random.default_rng(seed)``."""
    by_writer: dict[str, list[str]] = defaultdict(list)
    for name in names:
        by_writer[writer_of[name]].append(name)
    rng = np.random.default_rng(seed)
    kept = []
    for writer in sorted(by_writer):
        own = by_writer[writer]
        kept += [own[i] for i in sorted(rng.choice(len(own), max_per_writer, replace=False))] \
            if len(own) > max_per_writer else own
    return sorted(kept)


def _read_readable(paths: Sequence[Path], size: tuple[int, int], channels: int,
                   invert: bool) -> tuple[list[np.ndarray | None], list[str]]:
    """Each file decoded (None if empty or unreadable) and its SHA-1."""

    def one(path: Path) -> tuple[np.ndarray | None, str]:
        data = path.read_bytes()
        try:
            pixels = decode_image(data, str(path), size, channels, invert, keep_aspect=True)
        except ValueError:
            pixels = None
        return pixels, hashlib.sha1(data).hexdigest()

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, paths))
    return [r[0] for r in results], [r[1] for r in results]


def _check_settings(level: str, segmentation: str, split: str, image_size: int | tuple[int, int] | None,
                    channels: int, min_samples: int, max_per_writer: int | None, val_fraction: float,
                    test_fraction: float) -> tuple[int, int]:
    """The images' (H, W); ValueError for settings no IAM release could serve."""
    if level not in LEVELS:
        raise ValueError(f"iam: level={level!r} must be one of {', '.join(LEVELS)}")
    if segmentation not in ("ok", "all"):
        raise ValueError(f"iam: segmentation={segmentation!r} must be ok (drop err crops, as most papers) or all")
    if split not in ("random", "standard"):
        raise ValueError(f"iam: split={split!r} must be random (seeded, writer-disjoint) or standard "
                         "(the Large Writer Independent Text Line Recognition Task files)")
    sides = [image_size] * 2 if isinstance(image_size, int) else list(image_size or LEVELS[level])
    if len(sides) != 2 or min(sides) < 8:
        raise ValueError(f"iam: image_size={image_size} must be S or [H, W] with sides of 8 or more "
                         f"(the {level} default is {list(LEVELS[level])})")
    if channels not in (1, 3):
        raise ValueError(f"iam: channels={channels} must be 1 (grey) or 3 (grey repeated as RGB)")
    if min_samples < 1:
        raise ValueError(f"iam: min_samples={min_samples} must be >= 1 (2 keeps every writer with a same-writer pair)")
    if max_per_writer is not None and max_per_writer < min_samples:
        raise ValueError(f"iam: max_per_writer={max_per_writer} must be >= min_samples={min_samples} (or null)")
    check_fractions("iam", val_fraction, test_fraction)
    return int(sides[0]), int(sides[1])


def iam(root: FilePath, level: Literal["words", "lines", "forms"] = "words",
        segmentation: Literal["ok", "all"] = "ok", split: Literal["random", "standard"] = "random",
        image_size: int | tuple[int, int] | None = None, channels: int = 1, invert: bool = True,
        min_samples: int = 2, max_per_writer: int | None = None, val_fraction: float = 0.1,
        test_fraction: float = 0.2, seed: int = 0) -> HandwritingDataset:
    """IAM word, line or form images labelled by writer (from ``ascii/forms.txt``).

    ``level``: words, lines or forms. ``segmentation``: ok (drop crops marked ``err``) or all
    (forms have no segmentation status).
    ``image_size``: [H, W] or S (S x S); the image is fitted with its aspect ratio kept and padded
    (null: 64 x 256 words, 64 x 1024 lines, 512 x 362 forms). ``max_per_writer`` keeps at most that
    many images of a writer (a seeded draw, before reading; IAM's writer 000 wrote far more than most);
    writers left with fewer than ``min_samples`` images are dropped (one image makes no
    same-writer pair). ``split``: random (seeded writer-disjoint, ``val_fraction`` and
    ``test_fraction`` of the writers) or standard (the writer-independent task's files).
    """
    size = _check_settings(level, segmentation, split, image_size, channels, min_samples, max_per_writer,
                           val_fraction, test_fraction)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ValueError(f"iam: root {str(base)!r} is not a folder; point data.root at the unpacked IAM release "
                         "(ascii/, words/ or lines/ or formsA-D/ ...)")
    writer_of_form = read_forms(_ascii_file(base, "forms.txt"))
    files = {p.stem: p for p in _image_files(base, level)}
    no_writer = sorted(n for n in files if form_of(n) not in writer_of_form)
    if no_writer:
        log.warning("iam: skipped %d images whose form is not in forms.txt, e.g. %s", len(no_writer), no_writer[0])
    names = sorted(n for n in files if form_of(n) in writer_of_form)
    dropped_err = unlisted = 0
    if segmentation == "ok" and level != "forms":
        status = read_segmentation(_ascii_file(base, f"{level}.txt"))
        unlisted = sum(n not in status for n in names)
        dropped_err = sum(status.get(n) is False for n in names)
        names = [n for n in names if status.get(n)]
        if unlisted:
            log.warning("iam: skipped %d %s images not listed in %s.txt (segmentation: ok)", unlisted, level, level)
    writer_of = {n: writer_of_form[form_of(n)] for n in names}
    assignment = standard_writers(base, writer_of_form) if split == "standard" else None
    if assignment is not None:
        listed = {w for writers in assignment.values() for w in writers}
        names = [n for n in names if writer_of[n] in listed]
    if max_per_writer is not None:
        names = _cap(names, writer_of, max_per_writer, seed)
    pixels, digests = _read_readable([files[n] for n in names], size, channels, invert)
    unreadable = [n for n, p in zip(names, pixels) if p is None]
    if unreadable:
        log.warning("iam: skipped %d empty or unreadable images (the release has %s empty): %s", len(unreadable),
                    " and ".join(KNOWN_EMPTY), ", ".join(unreadable[:10]))
    good = [i for i, p in enumerate(pixels) if p is not None]
    counts: dict[str, int] = defaultdict(int)
    for i in good:
        counts[writer_of[names[i]]] += 1
    few = sorted(w for w, c in counts.items() if c < min_samples)
    if few:
        log.warning("iam: dropped %d writers with fewer than min_samples=%d images", len(few), min_samples)
    keep = [i for i in good if counts[writer_of[names[i]]] >= min_samples]
    if not keep:
        raise ValueError(f"iam: no {level} images left under {str(base)!r} after the segmentation, min_samples and "
                         "readability filters")
    kept = [names[i] for i in keep]
    images = torch.from_numpy(np.stack([pixels[i] for i in keep]))
    writers = [writer_of[n] for n in kept]
    rel_paths = [files[n].relative_to(base).as_posix() for n in kept]
    duplicates = byte_duplicates(rel_paths, [digests[i] for i in keep], writers)
    warn_duplicates("iam", duplicates)
    present = set(writers)
    if assignment is None:
        assignment = split_writers("iam", writers, val_fraction, test_fraction, seed)
    else:
        assignment = {part: [w for w in ws if w in present] for part, ws in assignment.items()}
        assignment = {part: ws for part, ws in assignment.items() if ws}
        if not {"train", "test"} <= set(assignment):
            raise ValueError(f"iam: the standard split leaves no train or no test writers with {level} images "
                             f"under {str(base)!r}")
    splits = make_splits(images, writers, rel_paths, assignment, document_of=[form_of(n) for n in kept])
    info: dict[str, Any] = {
        "source": str(base), "synthetic": False, "level": level, "segmentation": segmentation, "split": split,
        "image_size": list(size), "keep_aspect": True, "segmentation_err_dropped": dropped_err,
        "unlisted_in_segmentation": unlisted,
        "no_writer": len(no_writer), "unreadable": unreadable, "writers_below_min_samples": len(few),
        "byte_duplicates": duplicates["groups"], "cross_writer_duplicates": duplicates["cross_writer"],
        "splits": split_info(splits)}
    return HandwritingDataset("iam", False, splits, info)


iam.check_recipe = recipe_check(_check_settings)
