"""Contour hinge: Otsu against scikit-image, contours and hinges by hand and against a plain-Python walk."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from hvkit_plugins.stages.handcrafted.contour_hinge import contour_edges, hinge, otsu_thresholds

STEP = {"E": (0, 1), "S": (1, 0), "W": (0, -1), "N": (-1, 0)}
ORDER = "ESWN"


def reference_hinge(ink: np.ndarray, leg: int, bins: int, ordered: bool = False) -> np.ndarray:
    """One (H, W) mask's hinge distribution, each contour walked edge by edge in plain Python."""
    height, width = ink.shape

    def at(r, c):
        return 0 <= r < height and 0 <= c < width and bool(ink[r, c])

    edges = set()  # (start corner row, column, direction) with the ink on the right
    for r in range(height + 1):
        for c in range(width + 1):
            if at(r, c) and not at(r - 1, c):
                edges.add((r, c, "E"))
            if at(r - 1, c - 1) and not at(r, c - 1):
                edges.add((r, c, "W"))
            if at(r, c - 1) and not at(r, c):
                edges.add((r, c, "S"))
            if at(r - 1, c) and not at(r - 1, c - 1):
                edges.add((r, c, "N"))
    votes = Counter()
    unvisited = set(edges)
    while unvisited:
        edge = min(unvisited)
        contour = []
        while edge in unvisited:
            unvisited.discard(edge)
            contour.append(edge)
            r, c, d = edge
            r, c = r + STEP[d][0], c + STEP[d][1]
            k = ORDER.index(d)
            edge = next((r, c, ORDER[(k + turn) % 4]) for turn in (-1, 0, 1) if (r, c, ORDER[(k + turn) % 4]) in edges)
        if len(contour) < 2 * leg:
            continue
        for i, (r, c, _) in enumerate(contour):
            sectors = []
            for j in (i + leg, i - leg):
                rr, cc, _ = contour[j % len(contour)]
                angle = math.atan2(-(rr - r), cc - c) % (2 * math.pi)
                sectors.append(min(int(angle / (2 * math.pi) * bins), bins - 1))
            votes[tuple(sectors) if ordered else tuple(sorted(sectors))] += 1
    cells = [(a, b) for a in range(bins) for b in range(0 if ordered else a, bins)]
    histogram = np.array([votes[cell] for cell in cells], dtype=np.float64)
    return np.sqrt(histogram / max(histogram.sum(), 1))


def blobs(seed: int, count: int, size: int = 32) -> np.ndarray:
    """Random ink: a few thick strokes and loops and some specks, as a handwritten word has."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    ink = np.zeros((count, size, size), dtype=bool)
    for k in range(count):
        for _ in range(4):
            r0, c0, radius, width = rng.uniform(6, size - 6), rng.uniform(6, size - 6), rng.uniform(3, 9), rng.uniform(1, 3)
            ink[k] |= np.abs(np.hypot(rows - r0, cols - c0) - radius) < width
        ink[k] |= rng.random((size, size)) < 0.01
    return ink


def as_images(ink: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(ink, 230, 20).astype(np.uint8))[:, None]


def test_otsu_equals_scikit_images():
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(40, 15, size=(6, 30, 30)), 0, 255).astype(np.uint8)
    images[:, 10:20] = np.clip(rng.normal(190, 25, size=(6, 10, 30)), 0, 255).astype(np.uint8)
    images[5] = rng.integers(0, 256, size=(30, 30))
    np.testing.assert_array_equal(otsu_thresholds(images), [threshold_otsu(image) for image in images])


def test_contours_by_hand():
    ink = np.zeros((3, 7, 7), dtype=bool)
    ink[0, 1:4, 1:5] = True                       # a 3 x 4 rectangle: one contour of 14 edges
    ink[1, 1, 1] = ink[1, 2, 2] = True            # two pixels touching at a corner: one contour (8-connected)
    ink[2, 1:6, 1:6] = True
    ink[2, 3, 3] = False                          # a square with a hole: 20 edges outside, 4 inside
    image, corner, following = contour_edges(ink)
    assert np.bincount(image).tolist() == [14, 8, 24]
    assert sorted(following.tolist()) == list(range(len(image)))  # a permutation
    top_left = np.flatnonzero((image == 0) & (corner[:, 0] == 1) & (corner[:, 1] == 1))
    walk = [int(top_left[0])]
    while following[walk[-1]] != walk[0]:
        walk.append(int(following[walk[-1]]))
    assert [tuple(corner[k]) for k in walk[:6]] == [(1, 1), (1, 2), (1, 3), (1, 4), (1, 5), (2, 5)]  # clockwise
    assert len(walk) == 14
    hole = (image == 2) & (corner[:, 0] >= 3) & (corner[:, 0] <= 4) & (corner[:, 1] >= 3) & (corner[:, 1] <= 4)
    start = int(np.flatnonzero(hole & (corner[:, 0] == 3) & (corner[:, 1] == 3))[0])
    assert tuple(corner[following[start]]) == (4, 3)  # the hole runs anticlockwise, ink still on the right


def test_hinge_of_a_rectangle_by_hand():
    # One-step legs on a w x h rectangle, walked clockwise (ink on the right). Sectors of 15°: 0° (E)
    # is 0, 90° (N) is 6, 180° (W) is 12, 270° (S) is 18. The legs (ahead, behind) are (E, W) along
    # the top, (S, N) down the right side, (W, E) along the bottom, (N, S) up the left side; at the
    # corners (E, S) top left, (S, W) top right, (W, N) bottom right and (N, E) bottom left.
    w, h = 9, 5
    ink = np.zeros((1, 12, 12), dtype=bool)
    ink[0, 3:3 + h, 2:2 + w] = True
    votes = {(0, 12): w - 1, (18, 6): h - 1, (12, 0): w - 1, (6, 18): h - 1,
             (0, 18): 1, (18, 12): 1, (12, 6): 1, (6, 0): 1}
    ordered = hinge(as_images(ink), leg=1, ordered=True).numpy()[0] ** 2 * 2 * (w + h)
    expected = np.zeros((24, 24))
    for (ahead, behind), count in votes.items():
        expected[ahead, behind] = count
    np.testing.assert_allclose(ordered, expected.ravel(), atol=1e-4)
    unordered = hinge(as_images(ink), leg=1).numpy()[0] ** 2 * 2 * (w + h)  # the paper's: (E, W) = (W, E) …
    cells = {(a, b): k for k, (a, b) in enumerate((a, b) for a in range(24) for b in range(a, 24))}
    expected = np.zeros(300)
    for cell, count in (((0, 12), 2 * (w - 1)), ((6, 18), 2 * (h - 1)),
                        ((0, 18), 1), ((12, 18), 1), ((6, 12), 1), ((0, 6), 1)):
        expected[cells[cell]] = count
    np.testing.assert_allclose(unordered, expected, atol=1e-4)


@pytest.mark.parametrize("leg, bins, ordered", [(8, 24, False), (3, 12, False), (5, 7, False), (8, 24, True),
                                                (4, 9, True)])
def test_hinge_equals_a_plain_python_walk(leg, bins, ordered):
    ink = blobs(leg, 5)
    found = hinge(as_images(ink), leg=leg, bins=bins, ordered=ordered, chunk=2).numpy()
    assert found.shape == (5, bins * bins if ordered else bins * (bins + 1) // 2) and found.dtype == np.float32
    np.testing.assert_allclose(found, np.stack([reference_hinge(mask, leg, bins, ordered) for mask in ink]),
                               atol=1e-6)


@pytest.mark.parametrize("ordered", [False, True])
def test_hinge_turns_with_the_image(ordered):
    # Rotating the ink a quarter turn anticlockwise adds 90° (6 sectors of 24) to every leg.
    ink = blobs(1, 3)
    cells = [(a, b) for a in range(24) for b in range(0 if ordered else a, 24)]
    index = {cell: k for k, cell in enumerate(cells)}
    turn = [((a + 6) % 24, (b + 6) % 24) for a, b in cells]
    turned = [index[cell if ordered else tuple(sorted(cell))] for cell in turn]
    found = hinge(as_images(np.rot90(ink, axes=(1, 2)).copy()), ordered=ordered).numpy()
    expected = np.zeros_like(found)
    expected[:, turned] = hinge(as_images(ink), ordered=ordered).numpy()
    np.testing.assert_allclose(found, expected, atol=1e-6)


def test_hinge_without_ink_and_bad_input():
    assert not hinge(torch.full((2, 1, 16, 16), 128, dtype=torch.uint8)).any()
    with pytest.raises(ValueError, match=r"hinge takes \(N, C, H, W\) images, got shape \(16, 16\)"):
        hinge(torch.zeros(16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="hinge needs leg >= 1 and bins >= 2, got leg 0 and bins 24"):
        hinge(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), leg=0)
