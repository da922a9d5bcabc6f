"""AngularMiner against pytorch-metric-learning's AngularMiner, the paper's angle by loops and a hand-made case."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners

from hvkit.testing import check_miner
from hvkit_plugins.miners.angular import AngularMiner

from .mined import assert_same_indices, largest_allocation, random_batch, random_reference, rows


def on_circle(degrees, radii=None):
    angles = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    points = torch.stack([angles.cos(), angles.sin()], dim=1)
    return points if radii is None else points * torch.tensor(radii, dtype=torch.float64)[:, None]


# a = 0°, p = 90° (label 0) and negatives at 180°, 270°, 45° and 225°: the angle at the negative,
# arctan(|a - p| / (2 |n - c|)) with c the midpoint of a and p, is 24.09°, 24.09°, 67.5° and 22.5°.
CIRCLE = on_circle([0, 90, 180, 270, 45, 225])
CIRCLE_LABELS = torch.tensor([0, 0, 1, 2, 3, 4])


@pytest.mark.parametrize("angle", [20.0, 35.0, 45.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_same_triplets_in_the_same_order_as_pml(angle, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    unit = F.normalize(x, dim=1)  # PML measures the angle on the embeddings as given
    assert_same_indices(AngularMiner(angle)(x, y), miners.AngularMiner(angle)(unit, y))
    assert_same_indices(AngularMiner(angle, normalize=False)(x, y), miners.AngularMiner(angle)(x, y))


@pytest.mark.parametrize("angle", [20.0, 45.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(2))
def test_with_a_reference_set_the_triplets_of_pml(angle, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    r, ry = random_reference(seed, dtype=dtype)
    pml = miners.AngularMiner(angle)
    ours = AngularMiner(angle, normalize=False)(x, y, ref_emb=r, ref_labels=ry)
    assert_same_indices(ours, pml(x, y, r, ry))
    assert ours[0].max() < len(y) and ours[2].max() >= len(y)
    unit, unit_r = F.normalize(x, dim=1), F.normalize(r, dim=1)
    assert_same_indices(AngularMiner(angle)(x, y, ref_emb=r, ref_labels=ry), pml(unit, y, unit_r, ry))


def papers_angle(x, a, p, n):
    """The angle at the negative in degrees, from the vectors (Wang et al. 2017, Eq. 5)."""
    centre = (x[a] + x[p]) / 2
    return math.degrees(math.atan(float((x[a] - x[p]).norm() / (2 * (x[n] - centre).norm()))))


@pytest.mark.parametrize("normalize", [True, False])
def test_equals_the_papers_angle_by_loops(normalize):
    x, y = random_batch(13, b=16)
    z = F.normalize(x, dim=1) if normalize else x
    expected = [(a, p, n) for a in range(16) for p in range(16) for n in range(16)
                if y[a] == y[p] and a != p and y[n] != y[a] and papers_angle(z, a, p, n) > 30]
    assert expected
    assert rows(AngularMiner(30, normalize=normalize)(x, y)) == expected


@pytest.mark.parametrize("angle, expected", [
    (23.0, [(0, 1, 2), (0, 1, 3), (0, 1, 4), (1, 0, 2), (1, 0, 3), (1, 0, 4)]),
    (30.0, [(0, 1, 4), (1, 0, 4)]),
    (70.0, []),
])
def test_hand_made_case_on_the_circle(angle, expected):
    assert papers_angle(CIRCLE, 0, 1, 5) == pytest.approx(22.5) and papers_angle(CIRCLE, 0, 1, 4) == pytest.approx(67.5)
    assert rows(AngularMiner(angle)(CIRCLE, CIRCLE_LABELS)) == expected
    assert rows(AngularMiner(angle)(CIRCLE * 3, CIRCLE_LABELS)) == expected  # scale-free once normalised


def test_raw_embeddings_change_the_angle_unless_normalised():
    x = on_circle([0, 90, 180, 270, 45, 225], radii=[1, 1, 1, 1, 3, 1])  # 45° pushed outwards
    assert rows(AngularMiner(30)(x, CIRCLE_LABELS)) == [(0, 1, 4), (1, 0, 4)]
    assert rows(AngularMiner(30, normalize=False)(x, CIRCLE_LABELS)) == []  # |n - c| grows: 17.2°


def test_memory_is_pairs_by_batch_not_a_cube():
    """A PK batch of 128 x 4: no array beyond an int64 pair of indices per (positive pair, row); PML gathers
    three (B³-sized) sets of embeddings."""
    x, _ = random_batch(0, b=512, d=16, dtype=torch.float32)
    y = torch.arange(512) // 4
    assert largest_allocation(lambda: AngularMiner(20)(x, y)) <= 16 * 512 * 3 * 512


def test_one_writer_and_singletons_give_no_triplets():
    x, _ = random_batch(0, b=6)
    for y in (torch.zeros(6, dtype=torch.long), torch.arange(6)):
        assert all(t.numel() == 0 for t in AngularMiner(1.0)(x, y))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    assert rows(AngularMiner()(x, y)) == rows(AngularMiner()(x.float(), y))


def test_default_is_pmls():
    assert math.radians(AngularMiner().angle) == pytest.approx(miners.AngularMiner().angle)


@pytest.mark.parametrize("angle", [0.0, -5.0, 90.0, 120.0, float("nan")])
def test_invalid_angles_raise(angle):
    with pytest.raises(ValueError, match="angular: angle"):
        AngularMiner(angle)


@pytest.mark.parametrize("params", [{}, {"angle": 40.0, "normalize": False}])
def test_conforms_to_the_miner_contract(params):
    check_miner(AngularMiner, params)
