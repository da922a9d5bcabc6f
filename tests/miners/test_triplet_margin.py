"""TripletMarginMiner against pytorch-metric-learning's TripletMarginMiner, a loop reference and a hand-made case."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.semi_hard import SemiHardMiner
from hvkit_plugins.miners.triplet_margin import TripletMarginMiner

from .mined import assert_same_indices, largest_allocation, random_batch, random_reference, rows

KINDS = ["all", "hard", "semihard", "easy"]
DISTANCES = [  # (params, PML distance, margin)
    ({}, LpDistance(), 0.2),
    ({"normalize": False}, LpDistance(normalize_embeddings=False), 1.0),
    ({"distance": "cosine"}, CosineSimilarity(), 0.3),
]

# Points on a line with raw distances, margin 0.35: the margin d(a, n) - d(a, p) of each candidate by hand.
LINE = torch.tensor([[0.0], [1.0], [0.9], [1.3], [2.5]], dtype=torch.float64)
LINE_LABELS = torch.tensor([0, 0, 1, 1, 2])
BY_HAND = {  # (0,1,n): -0.1, 0.3, 1.5; (1,0,n): -0.9, -0.7, 0.5; (2,3,n): 0.5, -0.3, 1.2; (3,2,n): 0.9, -0.1, 0.8
    "all": [(0, 1, 2), (0, 1, 3), (1, 0, 2), (1, 0, 3), (2, 3, 1), (3, 2, 1)],
    "hard": [(0, 1, 2), (1, 0, 2), (1, 0, 3), (2, 3, 1), (3, 2, 1)],
    "semihard": [(0, 1, 3)],
    "easy": [(0, 1, 4), (1, 0, 4), (2, 3, 0), (2, 3, 4), (3, 2, 0), (3, 2, 4)],
}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("params, pml_distance, margin", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(2))
def test_same_triplets_in_the_same_order_as_pml(kind, params, pml_distance, margin, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=pml_distance)(x, y)
    assert_same_indices(TripletMarginMiner(margin, kind, **params)(x, y), pml)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("params, pml_distance, margin", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_with_a_reference_set_the_triplets_of_pml(kind, params, pml_distance, margin, dtype):
    x, y = random_batch(3, dtype=dtype)
    r, ry = random_reference(3, dtype=dtype)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets=kind, distance=pml_distance)(x, y, r, ry)
    ours = TripletMarginMiner(margin, kind, **params)(x, y, ref_emb=r, ref_labels=ry)
    assert_same_indices(ours, pml)
    assert ours[0].max() < len(y) and max(ours[1].max(), ours[2].max()) >= len(y)


def test_same_as_pml_on_a_large_batch():  # 100 rows: torch.cdist switches to its matrix-product form
    x, y = random_batch(5, b=100, d=16, classes=20, dtype=torch.float32)
    for kind in KINDS:
        pml = miners.TripletMarginMiner(margin=0.1, type_of_triplets=kind)(x, y)
        assert_same_indices(TripletMarginMiner(0.1, kind)(x, y), pml)


def loop_reference(x, y, margin, kind, cosine):
    """Every (a, p, n), its margin computed and classified one by one in float64."""
    x = F.normalize(x.double(), dim=1)
    found = []
    for a in range(len(y)):
        for p in range(len(y)):
            for n in range(len(y)):
                if y[a] != y[p] or a == p or y[a] == y[n]:
                    continue
                if cosine:
                    m = float(x[a] @ x[p] - x[a] @ x[n])
                else:
                    m = float((x[a] - x[n]).norm() - (x[a] - x[p]).norm())
                keep = {"all": m <= margin, "hard": m <= 0, "semihard": 0 < m <= margin, "easy": m > margin}[kind]
                if keep:
                    found.append((a, p, n))
    return found


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("cosine", [False, True])
def test_equals_a_loop_over_every_triplet(kind, cosine):
    x, y = random_batch(12, b=16)
    expected = loop_reference(x, y, 0.25, kind, cosine)
    assert expected
    assert rows(TripletMarginMiner(0.25, kind, "cosine" if cosine else "euclidean")(x, y)) == expected


@pytest.mark.parametrize("kind", KINDS)
def test_hand_made_case_on_a_line(kind):
    assert rows(TripletMarginMiner(0.35, kind, normalize=False)(LINE, LINE_LABELS)) == BY_HAND[kind]


def test_the_kinds_partition_the_candidates():
    x, y = random_batch(4)
    found = {kind: set(rows(TripletMarginMiner(0.3, kind)(x, y))) for kind in KINDS}
    assert found["hard"] | found["semihard"] == found["all"] and not found["hard"] & found["semihard"]
    assert not found["all"] & found["easy"]
    candidates = sum(int(((y == y[a]).sum() - 1) * (y != y[a]).sum()) for a in range(len(y)))
    assert len(found["all"]) + len(found["easy"]) == candidates


def test_semihard_equals_hvkits_semi_hard_miner():
    x, y = random_batch(6)
    assert rows(TripletMarginMiner(0.2, "semihard")(x, y)) == rows(SemiHardMiner(0.2)(x, y))


def test_memory_is_pairs_by_batch_not_a_cube():
    """A PK batch of 128 x 4: no array beyond an int64 pair of indices per (positive pair, row); PML's B³ = 134 MB."""
    x, _ = random_batch(0, b=512, d=16, dtype=torch.float32)
    y = torch.arange(512) // 4
    pairs = 512 * 3
    for kind in KINDS:
        assert largest_allocation(lambda: TripletMarginMiner(0.2, kind)(x, y)) <= 16 * pairs * 512


def test_one_writer_and_singletons_give_no_triplets():
    x, _ = random_batch(0, b=6)
    for y in (torch.zeros(6, dtype=torch.long), torch.arange(6)):
        assert all(t.numel() == 0 for t in TripletMarginMiner(1.0, "all")(x, y))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    assert rows(TripletMarginMiner()(x, y)) == rows(TripletMarginMiner()(x.float(), y))


def test_defaults_are_pmls():
    ours, pml = TripletMarginMiner(), miners.TripletMarginMiner()
    assert (ours.margin, ours.type_of_triplets) == (pml.margin, pml.type_of_triplets)


@pytest.mark.parametrize("kwargs, message", [
    (dict(margin=-0.1), "triplet_margin: margin"), (dict(margin=float("nan")), "triplet_margin: margin"),
    (dict(type_of_triplets="hardest"), "triplet_margin: type_of_triplets"),
    (dict(distance="dot"), "triplet_margin: distance"),
    (dict(distance="cosine", normalize=False), "triplet_margin: normalize"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletMarginMiner(**kwargs)


@pytest.mark.parametrize("params", [{}, {"type_of_triplets": "semihard", "distance": "cosine"},
                                    {"type_of_triplets": "easy", "normalize": False, "margin": 1.0}])
def test_conforms_to_the_miner_contract(params):
    check_miner(TripletMarginMiner, params)
