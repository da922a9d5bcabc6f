"""GSC features: directions, rules, runs, concavities and bands by hand, a quarter turn, a plain-Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hvkit_plugins.stages.handcrafted.gsc import (CONCAVITY, DIRECTIONS, NEIGHBOURS, STRUCTURAL_RULES,
                                                  concavities, equal_mass_bands, gradient_directions, gsc,
                                                  run_lengths, structural_hits)

SOBEL = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])


def as_images(masks: np.ndarray) -> torch.Tensor:
    """Boolean (N, H, W) masks as (N, 1, H, W) images in [0, 255] with bright ink."""
    return torch.from_numpy(masks[:, None].astype(np.float32) * 255)


def rule_hits(ink: np.ndarray) -> np.ndarray:
    """(rules, H, W): where each structural rule fires on the (H, W) mask."""
    return np.stack(structural_hits(ink[None], gradient_directions(ink[None])))[:, 0]


def test_gradient_directions_of_a_block_point_into_the_ink():
    ink = np.zeros((1, 12, 12), dtype=bool)
    ink[0, 3:9, 2:10] = True
    d = gradient_directions(ink)[0]
    assert (d[2:4, 4:8] == 9).all() and (d[8:10, 4:8] == 3).all()     # top edge: into the ink is down (270°)
    assert (d[5:7, 1:3] == 0).all() and (d[5:7, 9:11] == 6).all()      # left edge: right (0°); right edge: left
    assert (d[4:8, 4:8] == -1).all() and (d[0] == -1).all()           # inside the ink and far from it: none
    # the top-left corner's Sobel vector is (3, -3): -45°, a tie between 300° and 330°, goes anticlockwise
    assert d[3, 2] == 11 and d[8, 9] == 5                             # (-3, 3): 135° between 120° and 150°


def as_set(rule) -> frozenset:
    return frozenset((k, frozenset(bins)) for k, bins in rule)


def quarter_turn(rule) -> frozenset:
    """A rule as it reads after a quarter turn anticlockwise: neighbour k is k + 2, every bin + 3."""
    return frozenset(((k + 2) % 8, frozenset((b + 3) % DIRECTIONS for b in bins)) for k, bins in rule)


def test_structural_rules_are_closed_under_a_quarter_turn():
    """The table maps onto itself — horizontal edges onto vertical ones, one diagonal onto the other."""
    table = [as_set(rule) for rule in STRUCTURAL_RULES]
    assert len(set(table)) == 12
    assert {quarter_turn(rule) for rule in STRUCTURAL_RULES} == set(table)


def test_a_horizontal_bar_fires_only_the_horizontal_edge_rules():
    ink = np.zeros((12, 16), dtype=bool)
    ink[4:7, 2:13] = True                                              # 3 rows, 11 columns
    hits = rule_hits(ink)
    fired = {int(r) for r in np.nonzero(hits.any((1, 2)))[0]}
    assert fired == {0, 1}
    # ink below (rule 1) along the top row, ink above (rule 0) along the bottom row: the 11 pixels but
    # the two ends and one more, whose corner neighbour points diagonally out of the rule's bins
    assert np.argwhere(hits[1]).tolist() == [[4, c] for c in range(4, 12)]
    assert np.argwhere(hits[0]).tolist() == [[6, c] for c in range(3, 11)]
    turned = rule_hits(np.rot90(ink).copy())
    assert {int(r) for r in np.nonzero(turned.any((1, 2)))[0]} == {2, 3}   # a vertical bar


def test_run_lengths_by_hand():
    ink = np.array([[[1, 1, 0, 1, 1, 1, 0, 1]]], dtype=bool)
    assert run_lengths(ink)[0, 0].tolist() == [2, 2, 0, 3, 3, 3, 0, 1]


def test_concavities_of_a_ring_and_a_cup():
    ring = np.zeros((1, 10, 10), dtype=bool)
    ring[0, 2:8, 2:8] = True
    ring[0, 3:7, 3:7] = False
    *open_one_way, hole = concavities(ring)
    assert hole[0].sum() == 16 and hole[0, 3:7, 3:7].all()
    assert not any(way.any() for way in open_one_way)                 # outside, at least two rays escape
    cup = ring.copy()
    cup[0, 2, 3:7] = False                                             # open at the top: a "U"
    up, down, left, right, hole = concavities(cup)
    assert up[0].sum() == 20 and up[0, 2:7, 3:7].all()
    assert not (down.any() or left.any() or right.any() or hole.any())
    left_cup = np.rot90(cup, axes=(1, 2)).copy()                       # a quarter anticlockwise: open to the left
    assert concavities(left_cup)[2].sum() == 20


def test_equal_mass_bands_by_hand():
    ink = np.zeros((1, 12, 12), dtype=bool)
    ink[0, 3:9, 2:10] = True
    ink[0, 5:7, 4:8] = False                                           # rows of 8, 8, 4, 4, 8, 8 ink pixels
    rows, cols = equal_mass_bands(ink, 4)
    # row midpoints of the mass 4, 12, 18, 22, 28, 36 out of 40: bands floor(4 m / 40)
    assert rows[0].tolist() == [-1, -1, -1, 0, 1, 1, 2, 2, 3, -1, -1, -1]
    assert cols[0].tolist() == [-1, -1, 0, 0, 1, 1, 2, 2, 3, 3, -1, -1]
    assert (equal_mass_bands(np.zeros((1, 5, 5), dtype=bool), 2)[0] == -1).all()


def reference_gsc(ink: np.ndarray, grid: int, stroke: float) -> np.ndarray:
    """One (H, W) mask's GSC vector on an even grid, pixel by pixel in plain Python."""
    height, width = ink.shape

    def at(r, c):
        return 0 <= r < height and 0 <= c < width and bool(ink[r, c])

    def direction(r, c):
        g_right = sum(SOBEL[i][j] * at(r + i - 1, c + j - 1) for i in range(3) for j in range(3))
        g_up = -sum(SOBEL[j][i] * at(r + i - 1, c + j - 1) for i in range(3) for j in range(3))
        if g_right == 0 and g_up == 0:
            return -1
        degrees = math.degrees(math.atan2(g_up, g_right)) % 360
        return int(math.floor(degrees / 30 + 0.5 + 1e-9)) % 12  # half-way goes anticlockwise

    def direction_at(r, c):
        return direction(r, c) if 0 <= r < height and 0 <= c < width else -1

    def run(r, c, dr, dc):
        length = 0
        while at(r + dr * (length + 1), c + dc * (length + 1)):
            length += 1
        return length

    def escapes(r, c, dr, dc):
        while 0 <= r + dr < height and 0 <= c + dc < width:
            r, c = r + dr, c + dc
            if ink[r, c]:
                return False
        return True

    features = np.zeros((3, grid * grid, 12))
    area = np.zeros(grid * grid)
    for r in range(height):
        for c in range(width):
            cell = (r * grid // height) * grid + c * grid // width
            area[cell] += 1
            if ink[r, c]:
                d = direction(r, c)
                if d >= 0:
                    features[0, cell, d] += 1
                for k, ((a, bins_a), (b, bins_b)) in enumerate(STRUCTURAL_RULES):
                    (ra, ca), (rb, cb) = NEIGHBOURS[a], NEIGHBOURS[b]
                    features[1, cell, k] += (direction_at(r + ra, c + ca) in bins_a
                                             and direction_at(r + rb, c + cb) in bins_b)
                features[2, cell, 0] += 1
                features[2, cell, 1] += 1 + run(r, c, 0, 1) + run(r, c, 0, -1) >= stroke * width
                features[2, cell, 2] += 1 + run(r, c, 1, 0) + run(r, c, -1, 0) >= stroke * height
            else:
                ways = [escapes(r, c, -1, 0), escapes(r, c, 1, 0), escapes(r, c, 0, -1), escapes(r, c, 0, 1)]
                if sum(ways) == 1:
                    features[2, cell, 3 + ways.index(True)] += 1
                elif sum(ways) == 0:
                    features[2, cell, 7] += 1
    features /= area[None, :, None]
    return np.sqrt(np.concatenate([features[0].ravel(), features[1].ravel(), features[2, :, :8].ravel()]))


@pytest.mark.parametrize("grid,stroke", [(4, 0.125), (3, 0.3), (2, 0.05)])
def test_gsc_equals_the_plain_python_reference(grid, stroke):
    rng = np.random.default_rng(grid)
    masks = np.zeros((3, 24, 20), dtype=bool)
    for mask in masks:  # strokes, a loop and specks
        for _ in range(4):
            r, c = rng.integers(0, 20), rng.integers(0, 16)
            mask[r:r + rng.integers(1, 5), c:c + rng.integers(1, 8)] = True
    masks[0, 4:12, 4:12] = True
    masks[0, 6:10, 6:10] = False
    got = gsc(as_images(masks), grid=grid, equal_mass=False, stroke=stroke).numpy()
    assert got.shape == (3, 32 * grid * grid)
    for mask, vector in zip(masks, got):
        np.testing.assert_allclose(vector, reference_gsc(mask, grid, stroke), atol=1e-6)


def test_a_quarter_turn_permutes_cells_directions_rules_and_concavities():
    rng = np.random.default_rng(0)
    ink = np.zeros((1, 32, 32), dtype=bool)
    for _ in range(6):
        r, c = rng.integers(0, 28, 2)
        ink[0, r:r + rng.integers(2, 9), c:c + rng.integers(2, 9)] = True
    before = gsc(as_images(ink), equal_mass=False).numpy()[0]
    after = gsc(as_images(np.rot90(ink, axes=(1, 2)).copy()), equal_mass=False).numpy()[0]
    cells = np.arange(16).reshape(4, 4)
    moved = np.rot90(cells).ravel()                                    # new cell i holds old cell moved[i]
    gradient, structural = before[:192].reshape(16, 12), before[192:384].reshape(16, 12)
    concavity = before[384:].reshape(16, 8)
    table = [as_set(rule) for rule in STRUCTURAL_RULES]
    rule_to = [table.index(quarter_turn(rule)) for rule in STRUCTURAL_RULES]
    expected_gradient, expected_structural = np.zeros_like(gradient), np.zeros_like(structural)
    expected_gradient[:, (np.arange(12) + 3) % 12] = gradient[moved]
    expected_structural[:, rule_to] = structural[moved]
    # up opens left, left opens down, down right, right up; horizontal strokes become vertical
    expected_concavity = concavity[moved][:, [0, 2, 1, 6, 5, 3, 4, 7]]
    assert CONCAVITY[3:7] == ("up", "down", "left", "right")
    np.testing.assert_allclose(after, np.concatenate([expected_gradient.ravel(), expected_structural.ravel(),
                                                      expected_concavity.ravel()]), atol=1e-6)
    assert before[:192].sum() > 0 and before[192:384].sum() > 0


def test_gsc_reads_ink_by_otsu_and_bands_by_mass():
    grey = np.full((1, 1, 16, 16), 40.0, dtype=np.float32)              # faint paper, bright ink
    grey[0, 0, 6:10, 1:15] = 220.0
    vector = gsc(torch.from_numpy(grey)).numpy()[0]
    density = vector[384:].reshape(16, 8)[:, 0] ** 2
    # the bar's 4 rows and 14 columns are cut into 4 x 4 bands of equal ink: each cell full
    np.testing.assert_allclose(density, np.ones(16))
    assert not gsc(torch.zeros(2, 1, 16, 16)).any()                     # no ink: all zeros


@pytest.mark.parametrize("kwargs,message", [
    ({"grid": 0}, "grid >= 1"), ({"grid": 20}, "at least 20 x 20"), ({"stroke": 0.0}, "stroke"),
    ({"binary": 1.0}, "binary is a threshold"), ({"binary": -0.1}, "binary is a threshold"),
])
def test_gsc_refuses_impossible_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        gsc(torch.zeros(1, 1, 16, 16), **kwargs)
    with pytest.raises(ValueError, match="takes"):
        gsc(torch.zeros(16, 16))


@pytest.mark.parametrize("threshold", [0.0, 0.05, 0.2])
def test_binary_gsc_marks_the_fractions_above_the_threshold(threshold):
    rng = np.random.default_rng(1)
    masks = rng.random((4, 24, 24)) < 0.3
    graded = gsc(as_images(masks)).numpy().astype(np.float64)
    bits = gsc(as_images(masks), binary=threshold).numpy()
    assert set(np.unique(bits)) == {0.0, 1.0}
    np.testing.assert_array_equal(bits, graded ** 2 > threshold + 1e-6)
