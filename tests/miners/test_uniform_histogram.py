"""UniformHistogramMiner against pytorch-metric-learning's (same draws from one seed), bins by loops, uniformity."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance
from scipy.stats import chisquare

from hvkit.testing import check_miner
from hvkit_plugins.miners.uniform_histogram import UniformHistogramMiner

from .mined import assert_same_indices, random_batch, random_reference, rows

SETTINGS = [  # (params, PML distance)
    ({}, LpDistance()),
    ({"num_bins": 7, "pos_per_bin": 3, "neg_per_bin": 5}, LpDistance()),
    ({"num_bins": 20, "pos_per_bin": 2, "neg_per_bin": 4, "normalize": False}, LpDistance(normalize_embeddings=False)),
    ({"num_bins": 10, "distance": "cosine"}, CosineSimilarity()),
]


def pml_miner(params, distance):
    counts = {k: v for k, v in params.items() if k in ("num_bins", "pos_per_bin", "neg_per_bin")}
    return miners.UniformHistogramMiner(**counts, distance=distance)


@pytest.mark.parametrize("params, pml_distance", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(2))
def test_same_draws_as_pml_from_the_same_seed(params, pml_distance, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    torch.manual_seed(seed)
    pml = pml_miner(params, pml_distance)(x, y)
    torch.manual_seed(seed)
    assert_same_indices(UniformHistogramMiner(**params)(x, y), pml)


@pytest.mark.parametrize("params, pml_distance", SETTINGS)
def test_with_a_reference_set_the_draws_of_pml(params, pml_distance):
    x, y = random_batch(4)
    r, ry = random_reference(4)
    torch.manual_seed(7)
    pml = pml_miner(params, pml_distance)(x, y, r, ry)
    torch.manual_seed(7)
    ours = UniformHistogramMiner(**params)(x, y, ref_emb=r, ref_labels=ry)
    assert_same_indices(ours, pml)
    assert ours[0].max() < len(y) and ours[3].max() >= len(y)


def test_a_generator_gives_the_draws_of_the_global_one_seeded_alike():
    x, y = random_batch(5)
    miner = UniformHistogramMiner(num_bins=9)
    torch.manual_seed(3)
    seeded = miner(x, y)
    drawn = miner(x, y, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(seeded, drawn))
    other = miner(x, y, generator=torch.Generator().manual_seed(4))
    assert not torch.equal(other[1], drawn[1])


def loop_bins(x, y, num_bins):
    """Each ordered positive and negative pair with its bin, by comparing its distance with every edge in float64."""
    x = F.normalize(x.double(), dim=1)
    kinds = []
    for same in (True, False):
        pairs = [(a, b) for a in range(len(y)) for b in range(len(y)) if (y[a] == y[b]) == same and a != b]
        d = [float((x[a] - x[b]).norm()) for a, b in pairs]
        edges = np.linspace(min(d), max(d), num_bins + 1)
        bins = {}
        for pair, value in zip(pairs, d):
            i = next(i for i in range(num_bins) if edges[i] <= value < edges[i + 1] or i == num_bins - 1)
            bins[pair] = i
        kinds.append(bins)
    return kinds


def test_every_non_empty_bin_gives_its_count_of_pairs_in_bin_order():
    x, y = random_batch(6, b=30)
    a1, p, a2, n = UniformHistogramMiner(num_bins=12, pos_per_bin=4, neg_per_bin=6)(x, y)
    for bins, (rows_, cols), per_bin in zip(loop_bins(x, y, 12), ((a1, p), (a2, n)), (4, 6)):
        drawn = [bins[pair] for pair in zip(rows_.tolist(), cols.tolist())]
        assert drawn == sorted(drawn)  # bin by bin
        non_empty = sorted(set(bins.values()))
        assert len(non_empty) > 6 and drawn == [b for b in non_empty for _ in range(per_bin)]


def test_draws_are_uniform_within_each_bin():
    x, y = random_batch(8, b=16, classes=3)
    miner = UniformHistogramMiner(num_bins=3, pos_per_bin=50, neg_per_bin=50)
    bins_pos, bins_neg = loop_bins(x, y, 3)
    counts = {}
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        _, _, a2, n = miner(x, y, generator=g)
        for pair in zip(a2.tolist(), n.tolist()):
            counts[pair] = counts.get(pair, 0) + 1
    for b in range(3):
        members = [pair for pair, i in bins_neg.items() if i == b]
        observed = [counts.get(pair, 0) for pair in members]
        assert sum(observed) == 40 * 50
        if len(members) > 1:
            assert chisquare(observed).pvalue > 1e-3


def test_hand_made_case_on_a_line():
    x = torch.tensor([[0.0], [1.0], [4.0], [0.5], [2.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    # raw positive distances: (0,1) (1,0) 1, (0,2) (2,0) 4, (1,2) (2,1) 3, (3,4) (4,3) 1.5; two bins [1, 2.5), [2.5, 4]
    torch.manual_seed(0)
    a1, p, a2, n = UniformHistogramMiner(num_bins=2, pos_per_bin=5, neg_per_bin=1, normalize=False)(x, y)
    low, high = {(0, 1), (1, 0), (3, 4), (4, 3)}, {(0, 2), (2, 0), (1, 2), (2, 1)}
    pairs = list(zip(a1.tolist(), p.tolist()))
    assert set(pairs[:5]) <= low and set(pairs[5:]) <= high and len(pairs) == 10
    # negative distances: 0.5, 2, 1, 0.5, 3.5, 2 (each twice): [0.5, 2) and [2, 3.5] each give one pair
    gaps = [abs(x[a] - x[b]).item() for a, b in zip(a2.tolist(), n.tolist())]
    assert len(gaps) == 2 and gaps[0] < 2 <= gaps[1]


def test_one_writer_gives_no_negatives_and_singletons_no_positives():
    x, _ = random_batch(0, b=6)
    a1, p, a2, n = UniformHistogramMiner(num_bins=4)(x, torch.zeros(6, dtype=torch.long))
    assert len(a1) > 0 and a2.numel() == n.numel() == 0
    a1, p, a2, n = UniformHistogramMiner(num_bins=4)(x, torch.arange(6))
    assert a1.numel() == p.numel() == 0 and len(a2) > 0


def test_equal_distances_fall_in_the_last_bin():
    x = torch.eye(4, dtype=torch.float64)  # every pair at sqrt(2)
    a1, p, a2, n = UniformHistogramMiner(num_bins=5, pos_per_bin=3, neg_per_bin=2)(x, torch.tensor([0, 0, 1, 1]))
    assert len(a1) == 3 and len(a2) == 2


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    torch.manual_seed(0)
    half = UniformHistogramMiner(num_bins=10)(x, y)
    torch.manual_seed(0)
    assert rows(half) == rows(UniformHistogramMiner(num_bins=10)(x.float(), y))


def test_defaults_are_pmls():
    ours, pml = UniformHistogramMiner(), miners.UniformHistogramMiner()
    assert (ours.num_bins, ours.pos_per_bin, ours.neg_per_bin) == (pml.num_bins, pml.pos_per_bin, pml.neg_per_bin)


@pytest.mark.parametrize("kwargs, message", [
    (dict(num_bins=0), "uniform_histogram: num_bins"), (dict(pos_per_bin=0), "uniform_histogram: pos_per_bin"),
    (dict(neg_per_bin=-1), "uniform_histogram: neg_per_bin"), (dict(distance="dot"), "uniform_histogram: distance"),
    (dict(distance="cosine", normalize=False), "uniform_histogram: normalize"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniformHistogramMiner(**kwargs)


@pytest.mark.parametrize("params", [{}, {"num_bins": 5, "distance": "cosine"},
                                    {"num_bins": 8, "pos_per_bin": 1, "neg_per_bin": 3, "normalize": False}])
def test_conforms_to_the_miner_contract(params):
    check_miner(UniformHistogramMiner, params)
