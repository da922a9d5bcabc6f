"""Local binary patterns (Ojala, Pietikäinen & Mäenpää 2002), pooled per cell as Ahonen et al. (2006) do."""

from __future__ import annotations

import numpy as np
import torch

from hvkit_plugins.stages.handcrafted.chunks import in_chunks

LBP_POINTS = 8
LBP_RADIUS = 1.0
LBP_GRID = 4


def lbp_codes(images: np.ndarray, points: int = LBP_POINTS, radius: float = LBP_RADIUS) -> np.ndarray:
    """LBP code of every pixel of (N, H, W) float64 grey images: (N, H, W) int64 in [0, 2^points).

    Bit ``p`` is ``s(g_p - g_c)``, ``s(x) = 1`` if ``x >= 0``: ``g_c`` the pixel, ``g_p`` the image
    at offset ``(-R sin(2 pi p / P), R cos(2 pi p / P))`` (rows, columns; rounded to 5 decimals),
    bilinearly interpolated, 0 outside the image — scikit-image's ``local_binary_pattern``
    (``method='default'``), value for value.
    """
    height, width = images.shape[1:]
    pad = int(np.ceil(radius)) + 1
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad)))
    codes = np.zeros(images.shape, dtype=np.int64)
    for p in range(points):
        # the sampling point in absolute coordinates, as scikit-image computes it, so that ties break alike
        r = np.arange(height) + round(-radius * np.sin(2 * np.pi * p / points), 5)
        c = np.arange(width) + round(radius * np.cos(2 * np.pi * p / points), 5)
        r0, c0 = np.floor(r), np.floor(c)
        fr, fc = (r - r0)[:, None], (c - c0)[None, :]
        r0, r1 = (r0.astype(int) + pad)[:, None], (np.ceil(r).astype(int) + pad)[:, None]
        c0, c1 = (c0.astype(int) + pad)[None, :], (np.ceil(c).astype(int) + pad)[None, :]
        top = (1 - fc) * padded[:, r0, c0] + fc * padded[:, r0, c1]
        bottom = (1 - fc) * padded[:, r1, c0] + fc * padded[:, r1, c1]
        neighbour = (1 - fr) * top + fr * bottom
        codes |= (neighbour - images >= 0).astype(np.int64) << p
    return codes


def uniform_bins(points: int = LBP_POINTS) -> np.ndarray:
    """Bin of each code in ``[0, 2^points)``: the uniform codes (at most two 0/1 transitions around the
    circle, ``P (P - 1) + 2`` of them) in increasing order, then one bin for all the others."""
    codes = np.arange(2 ** points)
    rotated = (codes >> 1) | ((codes & 1) << (points - 1))
    transitions = np.array([bin(x).count("1") for x in codes ^ rotated])
    uniform = transitions <= 2
    bins = np.full(len(codes), int(uniform.sum()))
    bins[uniform] = np.arange(int(uniform.sum()))
    return bins


def lbp(images: torch.Tensor, grid: int = LBP_GRID, chunk: int | None = None) -> torch.Tensor:
    """Uniform-LBP histograms of (N, C, H, W) images in [0, 255] on a ``grid`` x ``grid`` of cells: (N, D) float32.

    Each pixel's 8-neighbour code at radius 1 (:func:`lbp_codes`, on the channels' mean) falls in one
    of 59 bins — the 58 uniform codes, not rotation-invariant, and one for the rest (scikit-image's
    ``nri_uniform`` classes); each cell (``i * grid // H``, ``j * grid // W``) gets the histogram of
    its pixels as a distribution, and the vector holds its square roots, so that the cosine of two
    vectors is the mean Bhattacharyya coefficient of their cells' distributions. D = 59 grid², 944
    for the default 4 x 4 cells (16 x 16 pixels at 64 x 64). LBP codes the texture of the strokes'
    edges — their curvature, ends and junctions — where HOG codes their orientation. ``chunk`` images
    at a time (:func:`~hvkit_plugins.stages.handcrafted.chunks.in_chunks`).
    """
    if images.dim() != 4:
        raise ValueError(f"lbp takes (N, C, H, W) images, got shape {tuple(images.shape)}")
    height, width = images.shape[2:]
    if min(height, width) < grid:
        raise ValueError(f"lbp needs images of at least {grid} x {grid} pixels, got {height} x {width}")
    bins = uniform_bins()
    classes = int(bins.max()) + 1
    cell = (np.arange(height)[:, None] * grid // height) * grid + np.arange(width)[None, :] * grid // width
    counts = np.bincount(cell.ravel(), minlength=grid * grid)

    def extract(batch: np.ndarray) -> np.ndarray:
        n = len(batch)
        slot = (np.arange(n)[:, None, None] * grid * grid + cell) * classes + bins[lbp_codes(batch.mean(1))]
        histogram = np.bincount(slot.ravel(), minlength=n * grid * grid * classes)
        return np.sqrt(histogram.reshape(n, grid * grid, classes) / counts[:, None]).reshape(n, -1)

    return in_chunks(images, extract, chunk)
