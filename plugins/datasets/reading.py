"""Shared reading for the writer-labelled datasets: image decoding, writer splits, duplicates.

Every dataset plugin here returns a :class:`HandwritingDataset`: in-memory writer-disjoint
:class:`hvkit.api.Split` s of uint8 images (N, C, H, W) with ink bright on a dark background.
"""

from __future__ import annotations

import hashlib
import inspect
import io
import logging
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from hvkit.api import Split

log = logging.getLogger("hvkit.datasets")


@dataclass
class HandwritingDataset:
    """A :class:`hvkit.api.WriterDataset`: named writer-disjoint splits plus provenance ``info``."""

    name: str
    synthetic: bool
    splits: dict[str, Split]
    info: dict[str, Any] = field(default_factory=dict)


def recipe_check(check: Callable[..., Any]) -> Callable[[dict[str, Any], dict[str, Any]], None]:
    """A dataset factory's ``check_recipe`` (API 1.8): ``check`` called with the settings it names.

    ``hvkit validate`` does not build a dataset (that reads its data), so each dataset keeps the
    checks of its values that need no data in one function, which its factory calls first and
    validation calls through this.
    """
    names = inspect.signature(check).parameters

    def check_recipe(spec: dict[str, Any], earlier: dict[str, Any]) -> None:
        check(**{name: spec[name] for name in names if name in spec})
    return check_recipe


def check_fractions(dataset: str, val_fraction: float, test_fraction: float) -> None:
    """Raise ValueError unless both fractions lie in [0, 1) and leave writers for training."""
    for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{dataset}: {key}={value} must be in [0, 1)")
    if val_fraction + test_fraction >= 1.0:
        raise ValueError(f"{dataset}: val_fraction + test_fraction = {val_fraction + test_fraction} "
                         "leaves no training writers; make their sum < 1")


def check_image_params(dataset: str, image_size: int, channels: int) -> None:
    """Raise ValueError for an impossible image size or channel count."""
    if image_size < 8:
        raise ValueError(f"{dataset}: image_size={image_size} is too small; use 8 or more (64 is the CEDAR AND size)")
    if channels not in (1, 3):
        raise ValueError(f"{dataset}: channels={channels} must be 1 (grey) or 3 (grey repeated as RGB)")


def split_writers(dataset: str, writers: Sequence[str], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, list[str]]:
    """Seeded writer-disjoint split: ``round(f * W)`` writers to test and val, the rest to train.

    The writers are sorted, then permuted with ``numpy.random.default_rng(seed)``; each split's
    writer list comes back sorted. ``val`` is left out when ``val_fraction`` is 0.
    """
    ordered = sorted(set(writers))
    n = len(ordered)
    n_test = round(test_fraction * n)
    n_val = round(val_fraction * n)
    if (test_fraction > 0 and n_test == 0) or (val_fraction > 0 and n_val == 0) or n - n_test - n_val < 1:
        raise ValueError(f"{dataset}: {n} writers cannot be split into train/val/test with "
                         f"val_fraction={val_fraction}, test_fraction={test_fraction}; use more writers")
    perm = np.random.default_rng(seed).permutation(n)
    shuffled = [ordered[i] for i in perm]
    parts = {"test": shuffled[:n_test], "val": shuffled[n_test:n_test + n_val],
             "train": shuffled[n_test + n_val:]}
    return {name: sorted(part) for name, part in parts.items() if part}


def make_split(images: torch.Tensor, writer_of: Sequence[str], paths: Sequence[str],
               writers: Sequence[str], group_of: dict[str, str] | None = None,
               document_of: Sequence[str] | None = None) -> Split:
    """The images of ``writers`` as a :class:`Split` whose labels index the sorted writer list
    (``group_of``: each writer's group, for ``Split.groups``; ``document_of``: each image's
    document, parallel to ``writer_of``, for ``Split.documents``)."""
    writers = sorted(writers)
    code = {w: i for i, w in enumerate(writers)}
    index = np.array([i for i, w in enumerate(writer_of) if w in code], dtype=np.int64)
    labels = np.array([code[writer_of[i]] for i in index], dtype=np.int64)
    return Split(images[torch.from_numpy(index)], labels, list(writers), [paths[i] for i in index],
                 [group_of[w] for w in writers] if group_of else [],
                 [document_of[i] for i in index] if document_of else [])


def make_splits(images: torch.Tensor, writer_of: Sequence[str], paths: Sequence[str],
                assignment: dict[str, list[str]], group_of: dict[str, str] | None = None,
                document_of: Sequence[str] | None = None) -> dict[str, Split]:
    """One :class:`Split` per entry of ``assignment`` (split name -> its writers)."""
    return {name: make_split(images, writer_of, paths, writers, group_of, document_of)
            for name, writers in assignment.items()}


def pixel_size(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as (height, width): an int S is S x S."""
    return (image_size, image_size) if isinstance(image_size, int) else (int(image_size[0]), int(image_size[1]))


def fit_and_pad(grey: Image.Image, height: int, width: int, background: int = 255) -> Image.Image:
    """Resize ``grey`` to fit ``height`` x ``width`` with its aspect ratio kept, centred on ``background``.

    The scale is ``min(height / h, width / w)`` (enlarging small crops too); the scaled sides
    are rounded (at least 1 pixel) and the image is placed at ``((height - h') // 2, (width - w') // 2)``.
    """
    w, h = grey.size
    scale = min(height / h, width / w)
    new_w, new_h = max(1, min(width, round(w * scale))), max(1, min(height, round(h * scale)))
    if (new_w, new_h) != (w, h):
        grey = grey.resize((new_w, new_h), Image.BILINEAR)
    canvas = Image.new("L", (width, height), background)
    canvas.paste(grey, ((width - new_w) // 2, (height - new_h) // 2))
    return canvas


def decode_image(data: bytes, source: str, image_size: int | Sequence[int], channels: int, invert: bool,
                 keep_aspect: bool = False) -> np.ndarray:
    """PNG/JPEG/... bytes -> uint8 (channels, H, W), ink bright when ``invert``.

    Transparent pixels are composited onto white; colour is converted to grey (ITU-R 601 luma,
    exact for CEDAR's equal-channel RGB); the image is resized bilinearly (antialiased) to
    ``image_size`` (an int S is S x S, or [H, W]) when its size differs — stretched, or with
    ``keep_aspect`` fitted and padded with white paper (:func:`fit_and_pad`); with ``invert``
    dark-on-white becomes bright-on-dark (255 - x, SSL-HV's 1 - x).
    """
    height, width = pixel_size(image_size)
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            grey = img.convert("L")
    except (OSError, ValueError, SyntaxError) as err:
        raise ValueError(f"cannot read image {source}: {type(err).__name__}: {err}".replace("\n", " ")) from None
    if keep_aspect:
        grey = fit_and_pad(grey, height, width)
    elif grey.size != (width, height):
        grey = grey.resize((width, height), Image.BILINEAR)
    pixels = np.asarray(grey, dtype=np.uint8)
    if invert:
        pixels = 255 - pixels
    return np.repeat(pixels[None], channels, axis=0)


def read_images(paths: Sequence[Path], image_size: int | Sequence[int], channels: int, invert: bool,
                keep_aspect: bool = False) -> tuple[torch.Tensor, list[str]]:
    """Decode ``paths`` (in parallel threads) -> (uint8 tensor (N, C, H, W), SHA-1 of each file's bytes)."""

    def one(path: Path) -> tuple[np.ndarray, str]:
        data = path.read_bytes()
        return (decode_image(data, str(path), image_size, channels, invert, keep_aspect),
                hashlib.sha1(data).hexdigest())

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, paths))
    if not results:
        return torch.zeros((0, channels, *pixel_size(image_size)), dtype=torch.uint8), []
    return torch.from_numpy(np.stack([r[0] for r in results])), [r[1] for r in results]


def byte_duplicates(names: Sequence[str], digests: Sequence[str],
                    writer_of: Sequence[str]) -> dict[str, Any]:
    """Groups of byte-identical files kept under different names, for ``info`` (and a warning).

    Returns ``{"groups": [[name, ...], ...], "cross_writer": [[name, ...], ...]}``; a
    cross-writer group is label noise (one image filed under two writers).
    """
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, digest in enumerate(digests):
        by_digest[digest].append(i)
    writer = dict(zip(names, writer_of))
    groups = sorted(sorted(names[i] for i in idx) for idx in by_digest.values() if len(idx) > 1)
    cross = [g for g in groups if len({writer[n] for n in g}) > 1]
    return {"groups": groups, "cross_writer": cross}


def warn_duplicates(dataset: str, duplicates: dict[str, Any]) -> None:
    """Say on the console how many byte-identical images were found (they are kept)."""
    if duplicates["groups"]:
        cross = duplicates["cross_writer"]
        log.warning("%s: %d groups of byte-identical images under different names (kept; listed in "
                    "info['byte_duplicates']), %d of them across writers: %s", dataset,
                    len(duplicates["groups"]), len(cross), "; ".join(" = ".join(g) for g in cross[:5]))


def split_info(splits: dict[str, Split]) -> dict[str, dict[str, int]]:
    """Image and writer counts per split, for ``info``."""
    return {name: {"images": len(s), "writers": len(s.writers)} for name, s in splits.items()}
