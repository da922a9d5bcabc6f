"""The contour-hinge feature of writer identification (Bulacu & Schomaker, IEEE TPAMI 2007), on ink contours."""

from __future__ import annotations

import numpy as np
import torch

from hvkit_plugins.stages.handcrafted.chunks import in_chunks

HINGE_LEG = 8
HINGE_BINS = 24

STEPS = np.array([(0, 1), (1, 0), (0, -1), (-1, 0)])
"""(row, column) step of each direction E, S, W, N, clockwise on the screen: d + 1 turns right."""


def otsu_thresholds(images: np.ndarray) -> np.ndarray:
    """Otsu's threshold of each (N, H, W) uint8 image: the ``t`` maximising the between-class variance
    of ``{x <= t}`` and ``{x > t}`` (the first such ``t``; 255 for an image of one grey level); ink is
    ``x > t``. (N,) int64."""
    n = len(images)
    levels = np.arange(256, dtype=np.float64)
    counts = np.bincount((np.arange(n)[:, None] * 256 + images.reshape(n, -1)).ravel(),
                         minlength=n * 256).reshape(n, 256).astype(np.float64)
    below, mass_below = counts.cumsum(1), (counts * levels).cumsum(1)
    total, mass = below[:, -1:], mass_below[:, -1:]
    above = total - below
    with np.errstate(divide="ignore", invalid="ignore"):
        between = below * above * (mass_below / below - (mass - mass_below) / above) ** 2
    between[~np.isfinite(between)] = -1.0
    between = between[:, :-1]
    return np.where(between.max(1) < 0, 255, between.argmax(1))  # one grey level: no ink


def contour_edges(ink: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ink's contours as a permutation of directed pixel-boundary edges, for (N, H, W) boolean masks.

    Every unit edge between an ink pixel and a background pixel (the image's outside is background)
    is walked with the ink on its right: the edges of each outer contour run clockwise on the
    screen, those of each hole anticlockwise. Returns, per edge, its image, its start corner
    ``(row, column)`` on the (H + 1) x (W + 1) grid of pixel corners, and the index of the next
    edge of its contour. Where two ink pixels touch only at a corner the contour turns left, across
    that corner: ink is 8-connected, as Bulacu & Schomaker's contour following takes it.
    """
    n, height, width = ink.shape
    padded = np.pad(ink, ((0, 0), (1, 1), (1, 1)))
    up, down = padded[:, :-1, 1:-1], padded[:, 1:, 1:-1]       # the pixels above and below each row edge
    left, right = padded[:, 1:-1, :-1], padded[:, 1:-1, 1:]    # left and right of each column edge
    exists = np.zeros((n, height + 1, width + 1, 4), dtype=bool)
    exists[:, :, :-1, 0] = down & ~up                          # E: ink below
    exists[:, :, 1:, 2] = up & ~down                           # W, from the right end: ink above
    exists[:, :-1, :, 1] = left & ~right                       # S: ink on the left
    exists[:, 1:, :, 3] = right & ~left                        # N, from the lower end: ink on the right
    image, row, col, direction = np.nonzero(exists)
    index = np.full(exists.shape, -1, dtype=np.int64)
    index[image, row, col, direction] = np.arange(len(image))
    end_row, end_col = row + STEPS[direction, 0], col + STEPS[direction, 1]
    following = np.full(len(image), -1, dtype=np.int64)
    for turn in (-1, 0, 1):                                    # left first, then straight, then right
        candidate = index[image, end_row, end_col, (direction + turn) % 4]
        following = np.where(following < 0, candidate, following)
    return image, np.stack([row, col], 1), following


def hinge(images: torch.Tensor, leg: int = HINGE_LEG, bins: int = HINGE_BINS, ordered: bool = False,
          chunk: int | None = None) -> torch.Tensor:
    """Contour-hinge distributions of (N, C, H, W) images in [0, 255], ink bright: (N, D) float32.

    Ink is each image's channels' mean above its Otsu threshold (:func:`otsu_thresholds`); its
    contours are followed along the pixel boundaries (:func:`contour_edges`). At every contour
    point two legs of ``leg`` steps run forward and back along the contour; their directions
    ``phi_1`` (ahead) and ``phi_2`` (behind), anticlockwise from the horizontal in ``bins``
    sectors of the circle, vote for the unordered pair ``{phi_1, phi_2}``: D = ``bins (bins + 1) / 2``
    cells, 300 for the paper's 24 sectors. ``ordered`` keeps the pair ``(phi_1, phi_2)`` as it is,
    D = ``bins²`` cells: with the ink always on the right of the walk, it tells a convex turn of the
    contour from a concave one. The hinge's opening and orientation code the curvature and slant
    of the strokes, the writer's "how" apart from the text's "what". Contours of fewer than
    ``2 leg`` edges (specks) do not vote. The vector holds the square roots of the image's
    distribution (the cosine is then the Bhattacharyya coefficient; the paper used the
    chi-squared distance); all zeros without ink. ``chunk`` images at a time
    (:func:`~hvkit_plugins.stages.handcrafted.chunks.in_chunks`).
    """
    if images.dim() != 4:
        raise ValueError(f"hinge takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    if leg < 1 or bins < 2:
        raise ValueError(f"hinge needs leg >= 1 and bins >= 2, got leg {leg} and bins {bins}")
    cell = np.arange(bins * bins).reshape(bins, bins)
    if not ordered:
        first, second = np.triu_indices(bins)
        cell[first, second] = cell[second, first] = np.arange(len(first))
    return in_chunks(images, lambda x: _hinge(otsu_ink(x), leg, bins, cell), chunk)


def otsu_ink(images: np.ndarray) -> np.ndarray:
    """Ink masks of (N, C, H, W) images in [0, 255], ink bright: each image's channels' mean, rounded,
    above its Otsu threshold (:func:`otsu_thresholds`). (N, H, W) bool."""
    grey = images.mean(1).round().astype(np.uint8)
    return grey > otsu_thresholds(grey)[:, None, None]


def _hinge(ink: np.ndarray, leg: int, bins: int, cell: np.ndarray) -> np.ndarray:
    image, corner, following = contour_edges(ink)
    preceding = np.empty_like(following)
    preceding[following] = np.arange(len(following))
    ahead, behind = np.arange(len(following)), np.arange(len(following))
    for _ in range(leg):
        ahead, behind = following[ahead], preceding[behind]
    keep = _cycle_lengths(following) >= 2 * leg
    votes = []
    for end in (ahead, behind):
        step = corner[end[keep]] - corner[keep]
        angle = np.arctan2(-step[:, 0], step[:, 1]) % (2 * np.pi)
        votes.append(np.minimum((angle / (2 * np.pi) * bins).astype(np.int64), bins - 1))
    n, cells = len(ink), int(cell.max()) + 1
    histogram = np.bincount(image[keep] * cells + cell[votes[0], votes[1]], minlength=n * cells).reshape(n, cells)
    total = histogram.sum(1, keepdims=True)
    return np.sqrt(histogram / np.maximum(total, 1))


def _cycle_lengths(following: np.ndarray) -> np.ndarray:
    """Length of the cycle of the permutation ``following`` through each element (pointer doubling)."""
    label, jump = np.arange(len(following)), following.copy()
    span = 1
    while span < len(following):
        label = np.minimum(label, label[jump])
        jump = jump[jump]
        span *= 2
    return np.bincount(label, minlength=len(following))[label]
