"""Synthetic handwritten "and" words from many synthetic writers: hvkit's embedded default data.

Each writer draws a *style* once: slant, letter proportions, per-letter shape (perturbed
control points of a, n, d; the bowls of a and d share part of it), ascender height and loop,
letter spacing, baseline slope and curvature, pen width, ink intensity and pressure, cursive
(connected) or print (pen lifted between letters), lead-in stroke. Each sample re-draws all of
these around the writer's values with a small jitter, plus a rotation, margins, a vertical
offset and, with probability ``clutter``, a fragment of a neighbouring word at the border, as
in real word crops. With ``documents_per_writer`` D > 0 a writer's samples are spread over D
documents (sittings) in turn, and each document shifts the writer's pen width, ink, slant, baseline
slope and aspect a little before the samples' own jitter, drawn from a stream of their own: with
``document_jitter: 0`` the images are those of D = 0, and a writer's words of one document
resemble each other more than its words of two, as a real letter's words do.

The letters are uniform Catmull-Rom splines through their control points, sampled densely and
rendered anti-aliased by pen coverage ``clip(r + 1/2 - d, 0, 1)`` (``r`` the pen radius, ``d``
the distance from a pixel centre to a spline point), max-composited with one vectorised
``scatter_reduce`` over every sample, point and pixel of a small window — no Python loop per
image or per stroke. Like CEDAR AND crops, the word fills the image width (aspect kept,
centred vertically), ink bright on a dark background, 64 x 64 by default.

Tuned against CEDAR AND: on SSL-HV balanced pairs of test writers, cosine similarity gives ROC
AUC 0.67 on raw pixels and 0.81 on HOG here, against 0.73 and 0.80 on the real cedar_and_dev
subset (``benchmarks/baselines_cedar.py``), while a linear model fitted on HOG of other writers
(PCA + LDA) reaches about 0.9: the writer style is there to learn. ``style_spread`` and
``sample_jitter`` make the task easier or harder. Output is deterministic by ``seed`` and cached
on disk under ``$HVKIT_CACHE`` (default ``~/.cache/hvkit``), keyed by every parameter and
``GENERATOR_VERSION``; 3,600 images take a few seconds on one core.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from .reading import (HandwritingDataset, check_fractions, check_image_params, make_splits, recipe_check, split_info,
                      split_writers)

log = logging.getLogger("hvkit.datasets")

GENERATOR_VERSION = 1
"""Bump whenever the generator's output changes: it is part of the cache key."""

# Letter control points in x-height units (x right, y up, baseline y = 0, x-height 1).
_BOWL = [(0.72, 0.80), (0.45, 1.00), (0.12, 0.82), (0.00, 0.42), (0.16, 0.04), (0.48, 0.08), (0.70, 0.45)]
_A = np.array(_BOWL + [(0.80, 1.00), (0.77, 0.40), (0.83, 0.03), (1.00, 0.22)])
_N = np.array([(0.05, 0.55), (0.12, 1.00), (0.10, 0.35), (0.12, 0.00), (0.16, 0.55), (0.38, 0.98),
               (0.62, 0.90), (0.70, 0.45), (0.72, 0.02), (0.90, 0.22)])
_D = np.array(_BOWL + [(0.80, 1.00), (0.80, 1.45), (0.84, 1.90), (0.80, 1.45), (0.80, 0.45),
                       (0.84, 0.03), (1.00, 0.22)])
_ASC_UP, _ASC_TOP, _ASC_DOWN = len(_BOWL) + 1, len(_BOWL) + 2, len(_BOWL) + 3
_ENTRY = np.array([0.50, 0.62])
_LETTERS = (_A, _N, _D)
_CLUTTER_KNOTS = 4
_CATMULL_ROM = 0.5 * np.array([[0, 2, 0, 0], [-1, 0, 1, 0], [2, -5, 4, -1], [-1, 3, -3, 1]], dtype=np.float64)


def cache_dir() -> Path:
    """Where generated data is cached: ``$HVKIT_CACHE`` or ``~/.cache/hvkit``."""
    return Path(os.environ.get("HVKIT_CACHE") or Path.home() / ".cache" / "hvkit")


def _writer_styles(rng: np.random.Generator, w: int, spread: float) -> dict[str, np.ndarray]:
    """Per-writer style parameters (arrays over writers)."""
    cursive = rng.random(w) < 0.65
    bowl = rng.normal(0.0, 0.07 * spread, (w, len(_BOWL), 2))
    shapes = []
    for template in _LETTERS:
        own = rng.normal(0.0, 0.07 * spread, (w, len(template), 2))
        if template is not _N:  # a and d share most of their bowl
            own[:, :len(_BOWL)] = 0.3 * own[:, :len(_BOWL)] + bowl
        shapes.append(own)
    return {
        "cursive": cursive,
        "shapes": shapes,
        "widths": np.exp(rng.normal(0.0, 0.14 * spread, (w, 3))),
        "gaps": np.where(cursive, 0.0, 0.22)[:, None] + rng.normal(0.0, 0.08 * spread, (w, 2)),
        "aspect": np.exp(rng.normal(0.0, 0.15 * spread, w)),
        "slant": rng.normal(0.2, 0.22 * spread, w),
        "ascender": 1.9 + rng.normal(0.0, 0.22 * spread, w),
        "loop": rng.uniform(-0.03, 0.18, w) * spread,
        "slope": rng.normal(0.0, 0.05 * spread, w),
        "curve": rng.normal(0.0, 0.03 * spread, w),
        "pen": np.exp(rng.normal(np.log(1.15), 0.28 * spread, w)),
        "ink": rng.uniform(0.6, 1.0, w),
        "pressure": rng.uniform(0.0, 0.25, w),
        "entry": rng.random(w) < 0.5,
    }


def _word_knots(rng: np.random.Generator, style: dict[str, np.ndarray], writer: np.ndarray, jitter: float,
                shifts: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """Control points (N, K, 2) of each sample's word, the pen-down flag per segment, per-sample params;
    ``shifts`` moves each sample's style values (log-scale ones in log space) before its jitter."""
    n = len(writer)

    def draw(key: str, sd: float, log_scale: bool = False) -> np.ndarray:
        base = style[key][writer]
        if key in shifts:
            base = base * np.exp(shifts[key]) if log_scale else base + shifts[key]
        noise = rng.normal(0.0, sd * jitter, base.shape)
        return base * np.exp(noise) if log_scale else base + noise

    widths, gaps = draw("widths", 0.05, True), draw("gaps", 0.05)
    ascender, loop = draw("ascender", 0.08), draw("loop", 0.03)
    parts, pen_down, x0 = [_ENTRY[None, None] + np.zeros((n, 1, 2))], [style["entry"][writer]], np.zeros(n)
    for i, template in enumerate(_LETTERS):
        if i > 0:
            pen_down.append(np.where(style["cursive"][writer], rng.random(n) < 0.95, rng.random(n) < 0.08))
        pts = template[None] + style["shapes"][i][writer] + rng.normal(0.0, 0.06 * jitter, (n, len(template), 2))
        if template is _D:
            pts[:, _ASC_UP, 0] += loop
            pts[:, _ASC_DOWN, 0] -= 0.6 * loop
            pts[:, _ASC_UP, 1] = pts[:, _ASC_DOWN, 1] = 0.5 * (1.0 + ascender)
            pts[:, _ASC_TOP, 1] += ascender - 1.9
        pts[..., 0] = pts[..., 0] * widths[:, i, None] + x0[:, None]
        x0 = pts[:, -1, 0] + (gaps[:, i] if i < 2 else 0.0)
        pen_down += [np.ones(n, bool)] * (len(template) - 1)
        parts.append(pts)
    knots = np.concatenate(parts, axis=1)
    segments = np.stack(pen_down, axis=1)
    x, y = knots[..., 0], knots[..., 1] * draw("aspect", 0.04, True)[:, None]
    x = x + np.tan(draw("slant", 0.05))[:, None] * y
    centre = 0.5 * (x.min(1) + x.max(1))[:, None]
    y = y + draw("slope", 0.03)[:, None] * (x - centre) + draw("curve", 0.015)[:, None] * (x - centre) ** 2
    angle = rng.normal(0.0, 0.07 * jitter, n)[:, None]
    x, y = np.cos(angle) * x - np.sin(angle) * y, np.sin(angle) * x + np.cos(angle) * y
    sample = {"pen": draw("pen", 0.08, True), "ink": np.clip(draw("ink", 0.04), 0.3, 1.0),
              "pressure": style["pressure"][writer], "phase": rng.uniform(0, 2 * np.pi, n)}
    return np.stack([x, y], -1), segments, sample


def _spline(knots: np.ndarray, steps: int | np.ndarray) -> np.ndarray:
    """Uniform Catmull-Rom through knots (N, K, 2) -> (N, P, 2) points, ``steps`` per segment (int or (K-1,))."""
    k = knots.shape[1]
    steps = np.broadcast_to(np.asarray(steps), (k - 1,))
    padded = np.concatenate([2 * knots[:, :1] - knots[:, 1:2], knots, 2 * knots[:, -1:] - knots[:, -2:-1]], 1)
    pieces = []
    for i, m in enumerate(steps):
        t = np.arange(m) / m
        basis = np.stack([np.ones_like(t), t, t ** 2, t ** 3], 1) @ _CATMULL_ROM  # (m, 4)
        pieces.append(np.matmul(basis, padded[:, i:i + 4]))
    return np.concatenate(pieces + [knots[:, -1:]], 1)


def _steps(knots: np.ndarray, spacing: float = 0.7) -> np.ndarray:
    """Points per segment so that consecutive spline points are about ``spacing`` pixels apart.

    Set by the 98th percentile of each segment's length over the samples, so that a rare long
    segment does not multiply the work for all.
    """
    coarse = _spline(knots, 8)[:, :-1].reshape(len(knots), knots.shape[1] - 1, 8, 2)
    ends = np.concatenate([coarse[:, :, 1:], knots[:, 1:, None]], 2)
    length = np.percentile(np.linalg.norm(ends - coarse, axis=-1).sum(-1), 98, axis=0)
    return np.maximum(1, np.ceil(length / spacing)).astype(int)


def _render(points: np.ndarray, ink: np.ndarray, radius: np.ndarray, size: int) -> np.ndarray:
    """Max-composite anti-aliased pen discs: points (N, P, 2) pixel (x, y), ink (N, P) -> uint8 (N, S, S).

    Samples are processed in chunks of similar pen radius, each with the smallest pixel window
    around every point that the pen can reach; the canvas has a border so that no bounds test
    is needed (points are clamped into the border, where they stay invisible).
    """
    out = np.empty((len(points), size, size), dtype=np.uint8)
    order = np.argsort(radius, kind="stable")
    chunk = 128
    for start in range(0, len(points), chunk):
        idx = order[start:start + chunk]
        r = torch.from_numpy(radius[idx]).float().view(-1, 1, 1, 1)
        reach = int(np.ceil(radius[idx].max() + 0.5))
        pad = 2 * reach + 1
        side = size + 2 * pad
        p = torch.from_numpy(points[idx]).float().clamp(-reach - 1, size + reach) + pad
        base = torch.floor(p)
        off = torch.arange(-reach, reach + 1, dtype=torch.float32) + 0.5
        dx2 = (base[..., :1] + off - p[..., :1]) ** 2  # (n, P, w)
        dy2 = (base[..., 1:] + off - p[..., 1:]) ** 2
        cover = torch.add(dy2[..., :, None], dx2[..., None, :]).sqrt_().neg_().add_(r + 0.5)  # (n, P, w, w)
        cover.clamp_(0.0, 1.0).mul_(torch.from_numpy(ink[idx]).float()[..., None, None])
        ioff = torch.arange(-reach, reach + 1)
        window = (ioff[:, None] * side + ioff[None, :]).view(1, 1, -1)
        index = (base[..., 1] * side + base[..., 0]).long()[..., None] + window
        canvas = torch.zeros(len(idx), side * side)
        canvas.scatter_reduce_(1, index.flatten(1), cover.flatten(1), reduce="amax")
        crop = canvas.view(-1, side, side)[:, pad:pad + size, pad:pad + size]
        out[idx] = (crop * 255.0).round().to(torch.uint8).numpy()
    return out


_DOCUMENT_SD = {"pen": 0.07, "ink": 0.05, "slant": 0.035, "slope": 0.012, "aspect": 0.03}
"""Spread of a document's shift of the writer's style (a sitting's pen, ink, posture) at ``document_jitter: 1``:
a writer's same-document pairs then score about 1 point of ROC AUC above its cross-document ones on the
centred pixel cosine, as on real CEDAR AND (docs/benchmarks.md, finding 52)."""


def document_index(writer: np.ndarray, documents_per_writer: int) -> np.ndarray:
    """Each sample's document within its writer (``writer`` sorted): a writer's n samples in D runs of n / D
    (the first n mod D runs one longer); all 0 for D = 0."""
    if documents_per_writer == 0:
        return np.zeros(len(writer), dtype=np.int64)
    starts = np.searchsorted(writer, writer)
    counts = np.bincount(writer)[writer]
    return ((np.arange(len(writer)) - starts) * documents_per_writer // counts).astype(np.int64)


def _document_shifts(writer: np.ndarray, documents_per_writer: int, jitter: float,
                     seed: int) -> dict[str, np.ndarray]:
    """Each sample's shift of its writer's style by its document, from a stream apart from the images'."""
    if documents_per_writer == 0:
        return {}
    rng = np.random.default_rng([seed, GENERATOR_VERSION, 1])
    cell = writer * documents_per_writer + document_index(writer, documents_per_writer)
    cells = (int(writer.max()) + 1) * documents_per_writer
    return {key: rng.normal(0.0, sd * jitter, cells)[cell] for key, sd in _DOCUMENT_SD.items()}


def generate_handwriting(num_writers: int = 300, samples_per_writer: int = 12, samples_spread: int = 0,
                         image_size: int = 64, style_spread: float = 1.0, sample_jitter: float = 1.0,
                         clutter: float = 0.3, documents_per_writer: int = 0, document_jitter: float = 1.0,
                         seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate the images: (uint8 (N, S, S) with ink bright, writer index (N,) int64), sorted by writer; each
    sample's document is :func:`document_index`."""
    rng = np.random.default_rng([seed, GENERATOR_VERSION])
    style = _writer_styles(rng, num_writers, style_spread)
    counts = samples_per_writer + rng.integers(-samples_spread, samples_spread + 1, num_writers)
    writer = np.repeat(np.arange(num_writers), counts)
    n, s = len(writer), image_size
    shifts = _document_shifts(writer, documents_per_writer, document_jitter, seed)
    knots, segments, sample = _word_knots(rng, style, writer, sample_jitter, shifts)
    # fit the word's visible strokes to the image: full width less margins, centred vertically
    coarse = _spline(knots, 8)
    down = np.concatenate([np.repeat(segments, 8, axis=1), segments[:, -1:]], 1)[..., None]
    lo, hi = np.where(down, coarse, np.inf).min(1), np.where(down, coarse, -np.inf).max(1)
    margin = rng.uniform(0.0, 6.0, (n, 2)) * s / 64
    scale = np.minimum((s - margin.sum(1)) / (hi - lo)[:, 0], 0.92 * s / (hi - lo)[:, 1])[:, None]
    left = margin[:, :1] + 0.5 * (s - margin.sum(1, keepdims=True) - scale * (hi - lo)[:, :1])
    top = 0.5 * (s - scale * (hi - lo)[:, 1:]) + rng.normal(0.0, 3.0 * s / 64, (n, 1))
    knots = np.stack([left + scale * (knots[..., 0] - lo[:, :1]), top + scale * (hi[:, 1:] - knots[..., 1])], -1)
    # a fragment of a neighbouring word at the top or bottom border
    edge = np.where(rng.random(n) < 0.5, 0.08, 0.92) * s
    fragment = np.stack([np.sort(rng.uniform(0, s, (n, _CLUTTER_KNOTS)), 1),
                         edge[:, None] + rng.normal(0.0, 0.06 * s, (n, _CLUTTER_KNOTS))], -1)
    steps = _steps(knots)
    word, frag = _spline(knots, steps), _spline(fragment, _steps(fragment))
    down = np.concatenate([np.repeat(segments, steps, axis=1), segments[:, -1:]], 1)
    t = np.linspace(0.0, 1.0, word.shape[1])[None]
    ink_word = sample["ink"][:, None] * (1.0 + sample["pressure"][:, None]
                                          * np.sin(2 * np.pi * 3 * t + sample["phase"][:, None]))
    ink = np.concatenate([np.where(down, np.clip(ink_word, 0.0, 1.0), 0.0),
                          np.repeat(np.where(rng.random((n, 1)) < clutter, sample["ink"][:, None], 0.0),
                                    frag.shape[1], 1)], 1)
    radius = np.clip(sample["pen"] * s / 64, 0.4, None)
    return _render(np.concatenate([word, frag], 1), ink, radius, s), writer.astype(np.int64)


def cached_handwriting(use_cache: bool = True, **params: int | float) -> tuple[np.ndarray, np.ndarray]:
    """:func:`generate_handwriting` through the on-disk cache (atomic writes; a bad cache file is regenerated)."""
    key = json.dumps({**params, "version": GENERATOR_VERSION}, sort_keys=True)
    path = cache_dir() / "synthetic_handwriting" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.npz"
    if use_cache and path.exists():
        try:
            with np.load(path) as data:
                if str(data["key"]) == key:
                    return data["images"], data["writer"]
        except (OSError, ValueError, KeyError) as err:
            log.warning("synthetic_handwriting: ignoring unreadable cache file %s (%s)", path, err)
    images, writer = generate_handwriting(**params)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
            np.savez(tmp, images=images, writer=writer, key=np.array(key))
        os.replace(tmp.name, path)
    return images, writer


def check_settings(name: str, num_writers: int, samples_per_writer: int, samples_spread: int, image_size: int,
                   channels: int, style_spread: float, sample_jitter: float, clutter: float, val_fraction: float,
                   test_fraction: float, documents_per_writer: int = 0, document_jitter: float = 1.0) -> None:
    """ValueError, naming dataset ``name`` (the recipe's plugin name), for settings the generator cannot serve."""
    check_image_params(name, image_size, channels)
    check_fractions(name, val_fraction, test_fraction)
    if num_writers < 2 or samples_per_writer - samples_spread < 1 or samples_spread < 0:
        raise ValueError(f"{name}: need num_writers >= 2 and 0 <= samples_spread < samples_per_writer "
                         f"(got {num_writers}, {samples_per_writer}, {samples_spread})")
    if style_spread < 0 or sample_jitter < 0 or not 0 <= clutter <= 1:
        raise ValueError(f"{name}: style_spread and sample_jitter must be >= 0 and clutter in [0, 1]")
    if documents_per_writer < 0 or document_jitter < 0:
        raise ValueError(f"{name}: documents_per_writer (0: none) and document_jitter must be >= 0 (got "
                         f"{documents_per_writer}, {document_jitter})")


def synthetic_handwriting(num_writers: int = 300, samples_per_writer: int = 12, samples_spread: int = 0,
                          image_size: int = 64, channels: int = 1, style_spread: float = 1.0,
                          sample_jitter: float = 1.0, clutter: float = 0.3, documents_per_writer: int = 0,
                          document_jitter: float = 1.0, val_fraction: float = 0.1, test_fraction: float = 0.2,
                          cache: bool = True, seed: int = 0) -> HandwritingDataset:
    """Synthetic handwritten "and" words from many synthetic writers (generated locally, cached).

    ``samples_per_writer`` +- ``samples_spread`` (uniform) images per writer; ``style_spread``
    scales the between-writer variation and ``sample_jitter`` the within-writer variation (1 =
    the tuned defaults); ``clutter`` is the probability of a neighbouring-word fragment. With
    ``documents_per_writer`` D > 0 each writer's images come from D documents (``Split.documents``,
    ``w0007-d1``), each shifting the writer's style by ``document_jitter`` (1 = the defaults). Writers
    are split writer-disjointly by ``seed`` (``val_fraction``/``test_fraction`` of the writers).
    """
    name = "synthetic_handwriting"
    check_settings(name, num_writers, samples_per_writer, samples_spread, image_size, channels, style_spread,
                   sample_jitter, clutter, val_fraction, test_fraction, documents_per_writer, document_jitter)
    params = dict(num_writers=num_writers, samples_per_writer=samples_per_writer,
                  samples_spread=samples_spread, image_size=image_size, style_spread=style_spread,
                  sample_jitter=sample_jitter, clutter=clutter, seed=seed)
    if documents_per_writer:
        params.update(documents_per_writer=documents_per_writer, document_jitter=document_jitter)
    pixels, writer = cached_handwriting(use_cache=cache, **params)
    images = torch.from_numpy(pixels).unsqueeze(1).repeat(1, channels, 1, 1)
    names = [f"w{i:04d}" for i in range(num_writers)]
    writer_of = [names[i] for i in writer]
    paths = [f"synthetic/{w}/{k}" for k, w in enumerate(writer_of)]
    documents = ([f"{w}-d{d}" for w, d in zip(writer_of, document_index(writer, documents_per_writer))]
                 if documents_per_writer else None)
    splits = make_splits(images, writer_of, paths, split_writers(name, names, val_fraction, test_fraction, seed),
                         document_of=documents)
    info = {"source": name, "synthetic": True, "generator": {**params, "version": GENERATOR_VERSION},
            "splits": split_info(splits)}
    return HandwritingDataset(name, True, splits, info)


synthetic_handwriting.check_recipe = recipe_check(check_settings)
