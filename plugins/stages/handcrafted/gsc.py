"""CEDAR's gradient, structural and concavity (GSC) features (Favata & Srikantan 1996), the features
of CEDAR-FOX's word-level writer verification (Srihari et al.)."""

from __future__ import annotations

import numpy as np
import torch

from hvkit_plugins.stages.handcrafted.chunks import in_chunks
from hvkit_plugins.stages.handcrafted.contour_hinge import otsu_ink

GSC_GRID = 4
GSC_STROKE = 0.125
DIRECTIONS = 12
"""Gradient direction bins: bin k is centred on 30 k°, anticlockwise from the image's +x axis."""

NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
"""(row, column) offset of neighbour k: E, NE, N, NW, W, SW, S, SE — at 45 k° on the screen."""

STRUCTURAL_RULES = (
    ((0, (2, 3, 4)), (4, (2, 3, 4))),      # horizontal edge, ink above: E and W point up
    ((0, (8, 9, 10)), (4, (8, 9, 10))),    # horizontal edge, ink below
    ((2, (5, 6, 7)), (6, (5, 6, 7))),      # vertical edge, ink left: N and S point left
    ((2, (11, 0, 1)), (6, (11, 0, 1))),    # vertical edge, ink right
    ((5, (4, 5, 6)), (1, (4, 5, 6))),      # rising diagonal (SW-NE), ink upper left
    ((5, (10, 11, 0)), (1, (10, 11, 0))),  # rising diagonal, ink lower right
    ((3, (1, 2, 3)), (7, (1, 2, 3))),      # falling diagonal (NW-SE), ink upper right
    ((3, (7, 8, 9)), (7, (7, 8, 9))),      # falling diagonal, ink lower left
    ((2, (5, 6, 7)), (0, (8, 9, 10))),     # corners: a vertical edge above or below meets
    ((6, (5, 6, 7)), (0, (2, 3, 4))),      # a horizontal edge to the right or left
    ((4, (8, 9, 10)), (2, (11, 0, 1))),
    ((6, (11, 0, 1)), (4, (2, 3, 4))),
)
"""Favata & Srikantan's 12 rules: (neighbour, its direction bins) twice; a pixel fires a rule when both
neighbours' gradient directions fall in their bins."""

CONCAVITY = ("density", "horizontal stroke", "vertical stroke", "up", "down", "left", "right", "hole")
"""The 8 concavity-family features of a cell, in order."""


def gsc(images: torch.Tensor, grid: int = GSC_GRID, equal_mass: bool = True, stroke: float = GSC_STROKE,
        binary: float | None = None, chunk: int | None = None) -> torch.Tensor:
    """GSC features of (N, C, H, W) images in [0, 255], ink bright: (N, 32 grid²) float32, 512 at 4 x 4.

    Ink is each image's channels' mean above its Otsu threshold. The image is cut into ``grid`` x
    ``grid`` cells — with ``equal_mass`` (GSC's rule) along the ink's bounding box so that each band
    of rows and of columns holds an equal share of the ink (pixels outside the box then belong to no
    cell), else evenly over the whole image — and each cell gets the fraction of its pixels that
    show each of 32 features:

    - *gradient* (12): ink pixels whose Sobel gradient of the ink mask, pointing into the ink,
      falls in each of 12 directions of 30°;
    - *structural* (12): ink pixels whose two neighbours of a :data:`STRUCTURAL_RULES` rule have
      the rule's gradient directions — edges of horizontal, vertical and diagonal strokes, corners;
    - *concavity* (8, :data:`CONCAVITY`): ink; ink in horizontal (vertical) runs of at least
      ``stroke`` times the image's width (height); background pixels that rays up, down, left and
      right reach the image's border from in exactly one direction (a concavity open up, down,
      left or right) or in none (a hole).

    The vector holds the square roots of these fractions (so that the few dense features do not
    drown the cosine): the gradient features of every cell (row by row), then the structural, then
    the concavity ones. With ``binary`` = t it holds bits instead, 1 where a fraction exceeds t:
    GSC's binary form, CEDAR-FOX's 512 bits at 4 x 4, for the ``correlation_pair`` verifier
    (CEDAR-FOX's thresholds are not published; t = 0 marks each feature present in a cell). All
    zeros without ink. ``chunk`` images at a time (:func:`~hvkit_plugins.stages.handcrafted.chunks.in_chunks`).
    """
    if images.dim() != 4:
        raise ValueError(f"gsc takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    height, width = images.shape[2:]
    if min(height, width) < grid or grid < 1:
        raise ValueError(f"gsc needs grid >= 1 and images of at least {grid} x {grid} pixels, got {height} x {width}")
    if not 0 < stroke <= 1:
        raise ValueError(f"gsc's stroke is a fraction of the image's side in (0, 1], got {stroke}")
    if binary is not None and not 0 <= binary < 1:
        raise ValueError(f"gsc's binary is a threshold on a cell's fraction of pixels in [0, 1), got {binary}")
    return in_chunks(images, lambda x: _gsc(otsu_ink(x), grid, equal_mass, stroke, binary), chunk)


def _gsc(ink: np.ndarray, grid: int, equal_mass: bool, stroke: float, binary: float | None) -> np.ndarray:
    n, height, width = ink.shape
    direction = gradient_directions(ink)
    gradient = [ink & (direction == k) for k in range(DIRECTIONS)]
    structural = structural_hits(ink, direction)
    horizontal = run_lengths(ink) >= stroke * width
    vertical = run_lengths(ink.transpose(0, 2, 1)).transpose(0, 2, 1) >= stroke * height
    concavity = [ink, ink & horizontal, ink & vertical, *concavities(ink)]
    rows, cols = (equal_mass_bands(ink, grid) if equal_mass else
                  (np.broadcast_to(np.arange(height) * grid // height, (n, height)),
                   np.broadcast_to(np.arange(width) * grid // width, (n, width))))
    cell = np.where((rows[:, :, None] >= 0) & (cols[:, None, :] >= 0), rows[:, :, None] * grid + cols[:, None, :], -1)
    inside = cell >= 0
    slot = np.arange(n)[:, None, None] * grid * grid + cell
    area = np.maximum(np.bincount(slot[inside], minlength=n * grid * grid), 1).reshape(n, grid * grid)
    families = []
    for maps in (gradient, structural, concavity):
        counts = np.stack([np.bincount(slot[inside & m], minlength=n * grid * grid) for m in maps], -1)
        fractions = counts.reshape(n, grid * grid, len(maps)) / area[:, :, None]
        families.append((np.sqrt(fractions) if binary is None else fractions > binary).reshape(n, -1))
    return np.concatenate(families, 1)


def gradient_directions(ink: np.ndarray) -> np.ndarray:
    """Direction bin (0-11, :data:`DIRECTIONS`) of the Sobel gradient of (N, H, W) boolean ink at each
    pixel, -1 where it is zero; outside the image is background. The gradient points into the ink,
    its angle anticlockwise on the screen (rows up); a diagonal, half-way between two bins, goes to
    the anticlockwise one, so that a quarter turn of the image adds exactly 3 to every bin."""
    x = np.pad(ink.astype(np.int64), ((0, 0), (1, 1), (1, 1)))
    height, width = ink.shape[1:]

    def at(dr: int, dc: int) -> np.ndarray:
        return x[:, 1 + dr:1 + dr + height, 1 + dc:1 + dc + width]

    g_right = (at(-1, 1) + 2 * at(0, 1) + at(1, 1)) - (at(-1, -1) + 2 * at(0, -1) + at(1, -1))
    g_up = (at(-1, -1) + 2 * at(-1, 0) + at(-1, 1)) - (at(1, -1) + 2 * at(1, 0) + at(1, 1))
    turns = np.arctan2(g_up, g_right) / (2 * np.pi / DIRECTIONS)
    bins = np.floor(turns + 0.5 + 1e-9).astype(np.int64) % DIRECTIONS
    return np.where((g_right == 0) & (g_up == 0), -1, bins)


def structural_hits(ink: np.ndarray, direction: np.ndarray) -> list[np.ndarray]:
    """Where each of the :data:`STRUCTURAL_RULES` fires on (N, H, W) boolean ink, given its
    :func:`gradient_directions`: ink pixels whose two neighbours of the rule have its directions
    (a neighbour outside the image has none)."""
    height, width = ink.shape[1:]
    neighbour = np.pad(direction, ((0, 0), (1, 1), (1, 1)), constant_values=-1)
    near = [neighbour[:, 1 + dr:1 + dr + height, 1 + dc:1 + dc + width] for dr, dc in NEIGHBOURS]
    return [ink & np.isin(near[a], bins_a) & np.isin(near[b], bins_b) for (a, bins_a), (b, bins_b) in STRUCTURAL_RULES]


def run_lengths(ink: np.ndarray) -> np.ndarray:
    """Length of the horizontal run of ink through each pixel of (N, H, W) boolean masks, 0 off the ink."""
    def so_far(mask: np.ndarray) -> np.ndarray:  # ink pixels in a row up to and including each, from the left
        counts = mask.cumsum(2)
        return counts - np.maximum.accumulate(np.where(mask, 0, counts), 2)

    return np.where(ink, so_far(ink) + so_far(ink[:, :, ::-1])[:, :, ::-1] - 1, 0)


def concavities(ink: np.ndarray) -> list[np.ndarray]:
    """Background pixels of (N, H, W) boolean ink open in exactly one direction — up, down, left,
    right — and in none (holes): a direction is open when the ray that way meets no ink before the
    image's border."""
    above, left = np.maximum.accumulate(ink, 1), np.maximum.accumulate(ink, 2)  # ink up to each pixel: at a
    below = np.maximum.accumulate(ink[:, ::-1], 1)[:, ::-1]                      # background one, ink on that
    right = np.maximum.accumulate(ink[:, :, ::-1], 2)[:, :, ::-1]                # side of it
    open_ways = [~above, ~below, ~left, ~right]
    count = sum(way.astype(np.int64) for way in open_ways)
    background = ~ink
    return [background & (count == 1) & way for way in open_ways] + [background & (count == 0)]


def equal_mass_bands(ink: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray]:
    """Band (0 … grid - 1) of each row and of each column of (N, H, W) boolean ink so that each band
    holds an equal share of the ink: a row goes to band ``floor(grid · m / M)``, ``m`` the ink above
    it plus half its own, ``M`` all the ink. Rows and columns outside the ink's bounding box are -1."""
    def bands(projection: np.ndarray) -> np.ndarray:
        total = projection.sum(1, keepdims=True)
        middle = projection.cumsum(1) - projection / 2
        band = np.minimum((grid * middle / np.maximum(total, 1)).astype(np.int64), grid - 1)
        seen = np.maximum.accumulate(projection > 0, 1)
        to_come = np.maximum.accumulate((projection > 0)[:, ::-1], 1)[:, ::-1]
        return np.where(seen & to_come, band, -1)

    return bands(ink.sum(2).astype(np.float64)), bands(ink.sum(1).astype(np.float64))
