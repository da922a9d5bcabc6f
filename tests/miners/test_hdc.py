"""HDCMiner against pytorch-metric-learning's HDCMiner, a loop reference and a hand-made case."""

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.hdc import HDCMiner

from .mined import assert_same_indices, random_batch, random_reference

DISTANCES = [  # (params, PML distance)
    ({}, LpDistance()),
    ({"normalize": False}, LpDistance(normalize_embeddings=False)),
    ({"distance": "cosine"}, CosineSimilarity()),
]


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.33, 1.0])
@pytest.mark.parametrize("params, pml_distance", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, seed", [(24, 0), (24, 1), (100, 2)])  # 100 rows: cdist's matrix-product form
def test_same_pairs_in_the_same_order_as_pml(fraction, params, pml_distance, dtype, b, seed):
    x, y = random_batch(seed, b=b, dtype=dtype)
    pml = miners.HDCMiner(filter_percentage=fraction, distance=pml_distance)(x, y)
    assert_same_indices(HDCMiner(fraction, **params)(x, y), pml)


@pytest.mark.parametrize("fraction", [0.5, 0.1])
@pytest.mark.parametrize("params, pml_distance", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("b, seed", [(24, 0), (100, 2)])
def test_with_a_reference_set_the_pairs_of_pml(fraction, params, pml_distance, dtype, b, seed):
    x, y = random_batch(seed, b=b, dtype=dtype)
    r, ry = random_reference(seed, rows=b + 30, dtype=dtype)
    pml = miners.HDCMiner(filter_percentage=fraction, distance=pml_distance)(x, y, r, ry)
    ours = HDCMiner(fraction, **params)(x, y, ref_emb=r, ref_labels=ry)
    assert_same_indices(ours, pml)
    assert ours[0].max() < b and ours[3].max() >= b


def loop_reference(x, y, fraction, cosine):
    """Each kind of pair scored one by one in float64 and sorted hardest first: (pairs, their scores, k) per kind."""
    x = F.normalize(x.double(), dim=1)
    kinds = []
    for same, hardest_first in ((True, not cosine), (False, cosine)):
        scored = [(float(x[a] @ x[b]) if cosine else float((x[a] - x[b]).norm()), (a, b))
                  for a in range(len(y)) for b in range(len(y)) if (y[a] == y[b]) == same and a != b]
        scored.sort(reverse=hardest_first)
        kinds.append((scored, math.ceil(fraction * len(scored))))
    return kinds


@pytest.mark.parametrize("fraction", [0.5, 0.2])
@pytest.mark.parametrize("cosine", [False, True])
def test_equals_sorting_every_pair_by_loops(fraction, cosine):
    x, y = random_batch(14, b=20)
    a1, p, a2, n = HDCMiner(fraction, "cosine" if cosine else "euclidean")(x, y)
    for (scored, k), (rows, cols) in zip(loop_reference(x, y, fraction, cosine), ((a1, p), (a2, n))):
        assert len(rows) == k > 0
        score = dict((pair, value) for value, pair in scored)
        mined = [score[(r, c)] for r, c in zip(rows.tolist(), cols.tolist())]
        # d(a, p) = d(p, a): of two tied pairs at the cut either may be kept, so compare the scores in order
        assert mined == pytest.approx([value for value, _ in scored[:k]], abs=1e-12)


def test_hand_made_case_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [0.5], [2.2]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    a1, p, a2, n = HDCMiner(0.5, normalize=False)(x, y)
    # 8 positive pairs (distances 1, 3, 2 each way and 1.7 twice): the 4 farthest are 3, 3, 2, 2
    assert set(zip(a1.tolist(), p.tolist())) == {(0, 2), (2, 0), (1, 2), (2, 1)}
    assert (x[a1] - x[p]).abs().flatten().tolist() == [3.0, 3.0, 2.0, 2.0]
    # 12 negative pairs (0.5 four times, 0.8 twice, then 1.2 ...): the 6 nearest
    assert set(zip(a2.tolist(), n.tolist())) == {(0, 3), (3, 0), (1, 3), (3, 1), (2, 4), (4, 2)}
    assert (x[a2] - x[n]).abs().flatten().tolist() == pytest.approx([0.5] * 4 + [0.8] * 2)


def test_keeps_at_least_one_pair_of_each_kind():
    x, y = random_batch(0, b=6)
    y = torch.tensor([0, 0, 1, 1, 1, 2])  # 8 positive pairs, 22 negative ones
    a1, p, a2, n = HDCMiner(0.01)(x, y)
    assert len(a1) == len(a2) == 1


def test_one_writer_gives_no_negatives_and_singletons_no_positives():
    x, _ = random_batch(0, b=6)
    a1, p, a2, n = HDCMiner()(x, torch.zeros(6, dtype=torch.long))
    assert len(a1) == 15 and a2.numel() == n.numel() == 0
    a1, p, a2, n = HDCMiner()(x, torch.arange(6))
    assert a1.numel() == p.numel() == 0 and len(a2) == 15


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    for ours, expected in zip(HDCMiner()(x, y), HDCMiner()(x.float(), y)):
        assert torch.equal(ours, expected)


def test_default_is_pmls():
    assert HDCMiner().filter_percentage == miners.HDCMiner().filter_percentage


@pytest.mark.parametrize("kwargs, message", [
    (dict(filter_percentage=0.0), "hdc: filter_percentage"), (dict(filter_percentage=1.5), "hdc: filter_percentage"),
    (dict(filter_percentage=float("nan")), "hdc: filter_percentage"), (dict(distance="dot"), "hdc: distance"),
    (dict(distance="cosine", normalize=False), "hdc: normalize"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        HDCMiner(**kwargs)


@pytest.mark.parametrize("params", [{}, {"filter_percentage": 0.2, "distance": "cosine"},
                                    {"filter_percentage": 1.0, "normalize": False}])
def test_conforms_to_the_miner_contract(params):
    check_miner(HDCMiner, params)
