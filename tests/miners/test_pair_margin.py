"""PairMarginMiner against pytorch-metric-learning's PairMarginMiner, a loop reference and hand-made cases."""

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.pair_margin import PairMarginMiner

from .mined import assert_same_indices, random_batch, random_reference, rows

SETTINGS = [  # (params, PML distance)
    ({}, LpDistance()),
    ({"pos_margin": 0.9, "neg_margin": 1.3}, LpDistance()),
    ({"pos_margin": 1.0, "neg_margin": 2.5, "normalize": False}, LpDistance(normalize_embeddings=False)),
    ({"pos_margin": 0.3, "neg_margin": 0.1, "distance": "cosine"}, CosineSimilarity()),
]


@pytest.mark.parametrize("params, pml_distance", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(3))
def test_same_pairs_in_the_same_order_as_pml(params, pml_distance, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    margins = {k: v for k, v in params.items() if k.endswith("margin")}
    pml = miners.PairMarginMiner(**margins, distance=pml_distance)(x, y)
    assert_same_indices(PairMarginMiner(**params)(x, y), pml)


@pytest.mark.parametrize("params, pml_distance", SETTINGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", range(2))
def test_with_a_reference_set_the_pairs_of_pml(params, pml_distance, dtype, seed):
    x, y = random_batch(seed, dtype=dtype)
    r, ry = random_reference(seed, dtype=dtype)
    margins = {k: v for k, v in params.items() if k.endswith("margin")}
    ours = PairMarginMiner(**params)(x, y, ref_emb=r, ref_labels=ry)
    assert_same_indices(ours, miners.PairMarginMiner(**margins, distance=pml_distance)(x, y, r, ry))
    assert ours[0].max() < len(y) and ours[1].max() >= len(y)


def test_with_a_copy_of_the_batch_as_reference_row_i_pairs_with_row_i():
    x, y = random_batch(5)
    a1, p, _, _ = PairMarginMiner(pos_margin=2.0, distance="cosine")(x, y, ref_emb=x.clone(), ref_labels=y.clone())
    assert list(zip(a1.tolist(), p.tolist())) == [(i, j) for i in range(24) for j in range(24) if y[i] == y[j]]


def test_a_reference_without_labels_raises():
    x, y = random_batch(0)
    with pytest.raises(ValueError, match="pair_margin: ref_labels was given without ref_emb"):
        PairMarginMiner()(x, y, ref_labels=y)
    with pytest.raises(ValueError, match=r"pair_margin: expected ref_emb \(R, 8\)"):
        PairMarginMiner()(x, y, ref_emb=x[:, :3], ref_labels=y)


def loop_reference(x, y, pos_margin, neg_margin, cosine):
    """Every ordered pair, tested one by one in float64."""
    x = F.normalize(x.double(), dim=1)
    positives, negatives = [], []
    for a in range(len(y)):
        for b in range(len(y)):
            value = float(x[a] @ x[b]) if cosine else float((x[a] - x[b]).norm())
            if y[a] == y[b] and a != b and (value < pos_margin if cosine else value > pos_margin):
                positives.append((a, b))
            if y[a] != y[b] and (value > neg_margin if cosine else value < neg_margin):
                negatives.append(("neg", a, b))
    return positives + negatives


@pytest.mark.parametrize("cosine", [False, True])
def test_equals_a_loop_over_every_pair(cosine):
    x, y = random_batch(11, b=20)
    params = {"pos_margin": 0.2, "neg_margin": 0.1, "distance": "cosine"} if cosine else {}
    expected = loop_reference(x, y, *(params.get(k, v) for k, v in (("pos_margin", 0.2), ("neg_margin", 0.8))),
                              cosine)
    assert expected[0][0] != "neg" and expected[-1][0] == "neg"
    assert rows(PairMarginMiner(**params)(x, y)) == expected


def test_hand_made_case_on_a_line():
    x = torch.tensor([[0.0], [0.1], [1.0], [0.5], [3.0]], dtype=torch.float64)
    y = torch.tensor([0, 0, 0, 1, 1])
    a1, p, a2, n = PairMarginMiner(normalize=False)(x, y)  # pos d > 0.2, neg d < 0.8
    assert list(zip(a1.tolist(), p.tolist())) == [(0, 2), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]
    assert list(zip(a2.tolist(), n.tolist())) == [(0, 3), (1, 3), (2, 3), (3, 0), (3, 1), (3, 2)]


def test_hand_made_case_on_the_circle_by_cosine():
    degrees = torch.tensor([0.0, 30.0, 90.0, 45.0], dtype=torch.float64).deg2rad()
    x = torch.stack([degrees.cos(), degrees.sin()], dim=1) * torch.tensor([[1.0], [2.0], [0.5], [3.0]])
    y = torch.tensor([0, 0, 0, 1])
    a1, p, a2, n = PairMarginMiner(pos_margin=0.6, neg_margin=0.8, distance="cosine")(x, y)
    assert list(zip(a1.tolist(), p.tolist())) == [(0, 2), (1, 2), (2, 0), (2, 1)]  # cos 0 and 0.5 < 0.6
    assert list(zip(a2.tolist(), n.tolist())) == [(1, 3), (3, 1)]  # cos 15° = 0.966 > 0.8


def test_one_writer_gives_no_negatives_and_singletons_no_positives():
    x, _ = random_batch(0, b=6)
    a1, p, a2, n = PairMarginMiner(pos_margin=0.0)(x, torch.zeros(6, dtype=torch.long))
    assert len(a1) == 30 and a2.numel() == n.numel() == 0
    a1, p, a2, n = PairMarginMiner(neg_margin=2.0)(x, torch.arange(6))
    assert a1.numel() == p.numel() == 0 and len(a2) == 30


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    assert rows(PairMarginMiner()(x, y)) == rows(PairMarginMiner()(x.float(), y))


def test_defaults_are_pmls():
    ours, pml = PairMarginMiner(), miners.PairMarginMiner()
    assert (ours.pos_margin, ours.neg_margin) == (pml.pos_margin, pml.neg_margin)


@pytest.mark.parametrize("kwargs, message", [
    (dict(pos_margin=-0.1), "pair_margin: pos_margin"), (dict(neg_margin=float("nan")), "pair_margin: neg_margin"),
    (dict(distance="dot"), "pair_margin: distance"),
    (dict(distance="cosine", normalize=False), "pair_margin: normalize"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PairMarginMiner(**kwargs)


def test_negative_cosine_margins_are_valid():
    assert PairMarginMiner(pos_margin=-0.5, neg_margin=-0.2, distance="cosine").neg_margin == -0.2


@pytest.mark.parametrize("params", [{}, {"distance": "cosine", "pos_margin": 0.5, "neg_margin": 0.0},
                                    {"normalize": False, "pos_margin": 1.0, "neg_margin": 3.0}])
def test_conforms_to_the_miner_contract(params):
    check_miner(PairMarginMiner, params)
