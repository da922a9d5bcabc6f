"""A generic writer-labelled image collection: a folder tree whose paths name the writer."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from hvkit.api import FilePath

from .reading import (HandwritingDataset, byte_duplicates, check_fractions, check_image_params, make_splits,
                      read_images, recipe_check, split_info, split_writers, warn_duplicates)

log = logging.getLogger("hvkit.datasets")


def _check_settings(pattern: str | None, image_size: int, channels: int, val_fraction: float,
                    test_fraction: float) -> re.Pattern | None:
    """The compiled ``pattern`` (None without one); ValueError for settings no folder could serve."""
    check_image_params("image_folder", image_size, channels)
    check_fractions("image_folder", val_fraction, test_fraction)
    try:
        regex = re.compile(pattern) if pattern is not None else None
    except re.error as err:
        raise ValueError(f"image_folder: pattern {pattern!r} is not a valid regular expression: {err}") from None
    if regex is not None and regex.groups == int("document" in regex.groupindex):
        raise ValueError(f"image_folder: pattern {pattern!r} has no group; put the writer in (...) or (?P<writer>...)")
    return regex


def image_folder(root: FilePath, pattern: str | None = None, invert: bool = True, image_size: int = 64,
                 channels: int = 1, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"),
                 exclude: list[str] | None = None, val_fraction: float = 0.1, test_fraction: float = 0.2,
                 seed: int = 0) -> HandwritingDataset:
    """Writer-labelled images from a folder tree; the writer is the sub-folder name or a regex on the path.

    Without ``pattern`` the writer is the first folder below ``root`` (``root/<writer>/**/img``).
    With ``pattern`` the writer comes from ``re.search`` on the path relative to ``root`` (with
    ``/`` separators): the named group ``writer`` if there is one, else all groups joined by
    ``_`` — e.g. Omniglot drawers, where a drawer is (alphabet, DD):
    ``^(?P<a>[^/]+)/character\\d+/\\d+_(?P<d>\\d+)\\.png$``. A named group ``group`` also gives each
    writer's group (``Split.groups``; one per writer), e.g. ``(?P<group>[^/]+)`` for the alphabet in
    place of ``(?P<a>...)``, so pairs can meet other writers of one alphabet. A named group ``document``
    names each image's document within its writer (``Split.documents``; not part of the writer), e.g. the
    page or session a sample comes from. Files the pattern does not match
    are skipped (and counted). ``invert`` makes dark ink on a light background bright; images
    are grey, resized to ``image_size``; ``exclude`` lists file names to leave out. Writers are
    split writer-disjointly with ``seed`` (``val_fraction``/``test_fraction`` of the writers).
    """
    regex = _check_settings(pattern, image_size, channels, val_fraction, test_fraction)
    base = Path(root).expanduser()
    if not base.is_dir():
        raise ValueError(f"image_folder: root {str(base)!r} is not a folder")
    suffixes = {e.lower() if e.startswith(".") else "." + e.lower()
                for e in extensions}
    excluded = {Path(e).name for e in exclude or []} | {Path(e).stem for e in exclude or []}
    paths, writer_of, group_of, document_of, skipped = [], [], {}, [], 0
    for path in sorted(base.rglob("*")):
        if path.suffix.lower() not in suffixes or not path.is_file() or excluded & {path.name, path.stem}:
            continue
        rel = path.relative_to(base).as_posix()
        if regex is None:
            writer = rel.split("/")[0] if "/" in rel else None
        else:
            match = regex.search(rel)
            writer = None if match is None else (
                match.group("writer") if "writer" in regex.groupindex
                else "_".join(g or "" for i, g in enumerate(match.groups(), 1) if i != regex.groupindex.get("document")))
        if writer is None:
            skipped += 1
            continue
        if regex is not None and "group" in regex.groupindex:
            group = match.group("group") or ""
            if group_of.setdefault(writer, group) != group:
                raise ValueError(f"image_folder: writer {writer!r} falls in two groups, {group_of[writer]!r} and "
                                 f"{group!r} (at {rel}); a writer's group must be one")
        paths.append(path)
        writer_of.append(writer)
        if regex is not None and "document" in regex.groupindex:
            document_of.append(writer + "/" + (match.group("document") or ""))
    if not paths:
        how = f"pattern {pattern!r}" if pattern else "root/<writer>/... sub-folders"
        raise ValueError(f"image_folder: no images with extensions {sorted(suffixes)} labelled by {how} "
                         f"under {str(base)!r}")
    if skipped:
        log.warning("image_folder: skipped %d images under %s that carry no writer label", skipped, base)
    images, digests = read_images(paths, image_size, channels, invert)
    rel_paths = [p.relative_to(base).as_posix() for p in paths]
    duplicates = byte_duplicates(rel_paths, digests, writer_of)
    warn_duplicates("image_folder", duplicates)
    splits = make_splits(images, writer_of, rel_paths,
                         split_writers("image_folder", writer_of, val_fraction, test_fraction, seed), group_of,
                         document_of)
    info = {"source": str(base), "synthetic": False, "pattern": pattern, "skipped_unlabelled": skipped,
            "byte_duplicates": duplicates["groups"], "cross_writer_duplicates": duplicates["cross_writer"],
            "splits": split_info(splits)}
    return HandwritingDataset("image_folder", False, splits, info)


image_folder.check_recipe = recipe_check(_check_settings)
