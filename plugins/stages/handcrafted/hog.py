"""Histograms of oriented gradients, the study's hand-crafted baseline."""

from __future__ import annotations

import numpy as np
import torch

from hvkit_plugins.stages.handcrafted.chunks import in_chunks

HOG_ORIENTATIONS = 9
HOG_CELL = 8
HOG_BLOCK = 2
_HOG_EPS = 1e-5


def hog(images: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """Histograms of oriented gradients (Dalal & Triggs 2005) of (N, C, H, W) images in [0, 255]: (N, D) float32.

    The study's HOG: 9 unsigned orientation bins of 20°, cells of 8 × 8 pixels, blocks of 2 × 2
    cells at a stride of one cell, L2-Hys block normalisation — scikit-image's ``hog`` with
    ``pixels_per_cell=(8, 8), cells_per_block=(2, 2)``, value for value. On the images scaled to
    [0, 1]: gradients are central differences, 0 on the border rows and columns; with several
    channels each pixel takes the channel of the largest gradient magnitude. Each pixel adds its
    magnitude to the bin of its orientation ``atan2(g_row, g_col)`` in degrees mod 180; a cell's
    histogram is the mean over its pixels (pixels beyond the last whole cell are dropped). Each
    block's 36 values ``v`` become ``v / sqrt(|v|² + ε²)``, clipped at 0.2, normalised again (ε =
    1e-5). The vector holds the blocks row by row, each block's cells row by row, each cell's
    bins: D = 9 · 4 · (H/8 − 1)(W/8 − 1), 1,764 at 64 × 64. Computed in float64 with NumPy,
    ``chunk`` images at a time (:func:`~hvkit_plugins.stages.handcrafted.chunks.in_chunks`).
    """
    if images.dim() != 4:
        raise ValueError(f"hog takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    cells = images.shape[2] // HOG_CELL, images.shape[3] // HOG_CELL
    if min(cells) < HOG_BLOCK:
        raise ValueError(f"hog needs images of at least {HOG_BLOCK * HOG_CELL} x {HOG_BLOCK * HOG_CELL} pixels, "
                         f"got {images.shape[2]} x {images.shape[3]}")
    return in_chunks(images, lambda x: _hog(x / 255.0, cells), chunk)


def _hog(images: np.ndarray, cells: tuple[int, int]) -> np.ndarray:
    g_row, g_col = np.zeros_like(images), np.zeros_like(images)
    g_row[:, :, 1:-1, :] = images[:, :, 2:, :] - images[:, :, :-2, :]
    g_col[:, :, :, 1:-1] = images[:, :, :, 2:] - images[:, :, :, :-2]
    magnitude = np.hypot(g_col, g_row)
    if images.shape[1] > 1:  # per pixel, the channel of the largest magnitude
        pick = magnitude.argmax(1)[:, None]
        g_row, g_col, magnitude = (np.take_along_axis(a, pick, 1) for a in (g_row, g_col, magnitude))
    g_row, g_col, magnitude = g_row[:, 0], g_col[:, 0], magnitude[:, 0]
    orientation = np.rad2deg(np.arctan2(g_row, g_col)) % 180
    edges = 180.0 / HOG_ORIENTATIONS * np.arange(1, HOG_ORIENTATIONS)
    bins = np.searchsorted(edges, orientation, side="right")  # bin i holds [20 i, 20 (i + 1))
    (rows, cols), n = cells, len(images)
    height, width = rows * HOG_CELL, cols * HOG_CELL
    cell = (np.arange(height)[:, None] // HOG_CELL) * cols + np.arange(width)[None, :] // HOG_CELL
    slot = ((np.arange(n)[:, None, None] * rows * cols + cell) * HOG_ORIENTATIONS + bins[:, :height, :width])
    histogram = np.bincount(slot.ravel(), magnitude[:, :height, :width].ravel(), n * rows * cols * HOG_ORIENTATIONS)
    histogram = histogram.reshape(n, rows, cols, HOG_ORIENTATIONS) / HOG_CELL ** 2
    blocks = np.lib.stride_tricks.sliding_window_view(histogram, (HOG_BLOCK, HOG_BLOCK), axis=(1, 2))
    blocks = blocks.transpose(0, 1, 2, 4, 5, 3).reshape(n, rows - HOG_BLOCK + 1, cols - HOG_BLOCK + 1, -1)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + _HOG_EPS ** 2)
    blocks = np.minimum(blocks, 0.2)
    blocks = blocks / np.sqrt((blocks ** 2).sum(-1, keepdims=True) + _HOG_EPS ** 2)
    return blocks.reshape(n, -1)

