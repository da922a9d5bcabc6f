"""BatchEasyHardMiner against pytorch-metric-learning's BatchEasyHardMiner, a loop reference and hand-made cases."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import CosineSimilarity, LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.batch_easy_hard import BatchEasyHardMiner
from hvkit_plugins.miners.batch_hard import BatchHardMiner

from .mined import assert_same_indices, random_batch, random_reference, rows

STRATEGIES = ["hard", "semihard", "easy", "all"]
VALID = [(p, n) for p, n in itertools.product(STRATEGIES, STRATEGIES)
         if not (p == n == "semihard") and {p, n} != {"semihard", "all"}]
DISTANCES = [  # (params, PML distance, allowed positive range, allowed negative range)
    ({}, LpDistance(), (0.3, 1.3), (0.5, 1.5)),
    ({"normalize": False}, LpDistance(normalize_embeddings=False), (0.5, 3.0), (1.0, 4.0)),
    ({"distance": "cosine"}, CosineSimilarity(), (-0.5, 0.8), (-0.3, 0.9)),
]


@pytest.mark.parametrize("pos, neg", VALID)
@pytest.mark.parametrize("params, pml_distance, pos_range, neg_range", DISTANCES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_same_pairs_in_the_same_order_as_pml(pos, neg, params, pml_distance, pos_range, neg_range, dtype):
    x, y = random_batch(0, dtype=dtype)
    pml = miners.BatchEasyHardMiner(pos, neg, distance=pml_distance)(x, y)
    assert_same_indices(BatchEasyHardMiner(pos, neg, **params)(x, y), pml)
    ranged = dict(allowed_pos_range=pos_range, allowed_neg_range=neg_range)
    pml = miners.BatchEasyHardMiner(pos, neg, **ranged, distance=pml_distance)(x, y)
    assert_same_indices(BatchEasyHardMiner(pos, neg, **ranged, **params)(x, y), pml)


@pytest.mark.parametrize("pos, neg", VALID)
@pytest.mark.parametrize("params, pml_distance, pos_range, neg_range", DISTANCES)
def test_with_a_reference_set_the_pairs_of_pml(pos, neg, params, pml_distance, pos_range, neg_range):
    x, y = random_batch(1, dtype=torch.float32)
    r, ry = random_reference(1, dtype=torch.float32)
    for ranged in ({}, dict(allowed_pos_range=pos_range, allowed_neg_range=neg_range)):
        pml = miners.BatchEasyHardMiner(pos, neg, **ranged, distance=pml_distance)(x, y, r, ry)
        ours = BatchEasyHardMiner(pos, neg, **ranged, **params)(x, y, ref_emb=r, ref_labels=ry)
        assert_same_indices(ours, pml)
        assert ours[0].max() < len(y) and ours[3].max() >= len(y)


def test_hard_hard_is_batch_hard():
    x, y = random_batch(2)
    a, p, a2, n = BatchEasyHardMiner("hard", "hard")(x, y)
    assert torch.equal(a, a2)
    assert rows((a, p, n)) == rows(BatchHardMiner()(x, y))


def loop_reference(x, y, pos, neg):
    """Per anchor, every candidate scanned in float64 (Euclidean on the unit sphere, first index on ties)."""
    x = F.normalize(x.double(), dim=1)
    d = [[float((x[a] - x[b]).norm()) for b in range(len(y))] for a in range(len(y))]

    def best(a, candidates, farthest):
        return max(candidates, key=lambda b: (d[a][b], -b)) if farthest else min(candidates, key=lambda b: (d[a][b], b))

    positives, negatives = [], []
    for a in range(len(y)):
        ps = [b for b in range(len(y)) if y[b] == y[a] and b != a]
        ns = [b for b in range(len(y)) if y[b] != y[a]]
        if pos == "semihard":
            n = best(a, ns, neg == "easy") if ns else None
            ps = [b for b in ps if n is not None and d[a][b] < d[a][n]]
            p = best(a, ps, True) if ps else None
        else:
            p = best(a, ps, pos == "hard") if ps else None
            ns = [b for b in ns if neg != "semihard" or (p is not None and d[a][b] > d[a][p])]
            n = best(a, ns, neg == "easy") if ns else None
        if p is not None and n is not None:
            positives.append((a, p))
            negatives.append(("neg", a, n))
    return positives + negatives


@pytest.mark.parametrize("pos, neg", [("easy", "semihard"), ("hard", "hard"), ("semihard", "easy"),
                                      ("easy", "easy"), ("semihard", "hard")])
def test_equals_a_loop_over_every_anchor(pos, neg):
    x, y = random_batch(7, b=20)
    expected = loop_reference(x, y, pos, neg)
    assert expected
    assert rows(BatchEasyHardMiner(pos, neg)(x, y)) == expected


# On a line with raw distances: label 0 at 0, 1, 3; label 1 at 1.5, 2.1; label 2 at 9 (no positive).
LINE = torch.tensor([[0.0], [1.0], [3.0], [1.5], [2.1], [9.0]], dtype=torch.float64)
LINE_LABELS = torch.tensor([0, 0, 0, 1, 1, 2])


def test_hand_made_cases_on_a_line():
    def mined(pos, neg, **kw):
        a1, p, a2, n = BatchEasyHardMiner(pos, neg, normalize=False, **kw)(LINE, LINE_LABELS)
        return list(zip(a1.tolist(), p.tolist())), list(zip(a2.tolist(), n.tolist()))

    # easy positives: 0->1 (1), 1->0 (1), 2->1 (2), 3->4, 4->3 (0.6); semi-hard negatives farther than those:
    # 0: 1.5 (d 1.5 > 1), 1: 3 is no negative; 1.5 (0.5) is not > 1, 2.1 (1.1) is; 2: 2.1 (0.9) < 2, 1.5 (1.5)
    # < 2, 9 (6) is; 3: 1 (0.5) < 0.6, 0 and 3 tie at 1.5 (the first index wins); 4: 3 (0.9)
    assert mined("easy", "semihard") == ([(0, 1), (1, 0), (2, 1), (3, 4), (4, 3)],
                                         [(0, 3), (1, 4), (2, 5), (3, 0), (4, 2)])
    assert mined("hard", "hard") == ([(0, 2), (1, 2), (2, 0), (3, 4), (4, 3)],
                                     [(0, 3), (1, 3), (2, 4), (3, 1), (4, 2)])
    # semi-hard positives nearer than the easy (farthest) negative: all of them here, the farthest kept
    assert mined("semihard", "easy")[0] == [(0, 2), (1, 2), (2, 0), (3, 4), (4, 3)]
    # 'all' positives with hard negatives: every positive pair, negatives of anchors with a negative
    pos, neg = mined("all", "hard")
    assert pos == [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (3, 4), (4, 3)]
    assert neg == [(0, 3), (1, 3), (2, 4), (3, 1), (4, 2), (5, 2)]
    # ranges: positives within [0.5, 1.5] only, so anchor 2 (positives at 2 and 3) drops out
    assert mined("easy", "hard", allowed_pos_range=(0.5, 1.5))[0] == [(0, 1), (1, 0), (3, 4), (4, 3)]


def test_one_writer_or_singletons_give_no_pairs_unless_all():
    x, _ = random_batch(0, b=6)
    mined = BatchEasyHardMiner()(x, torch.zeros(6, dtype=torch.long))
    assert all(t.numel() == 0 for t in mined)
    a1, p, a2, n = BatchEasyHardMiner("hard", "all")(x, torch.arange(6))
    assert a1.numel() == p.numel() == 0 and len(a2) == 30


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mines_as_float32_does(dtype):
    x, y = random_batch(3, dtype=torch.float32)
    x = x.to(dtype)
    assert rows(BatchEasyHardMiner()(x, y)) == rows(BatchEasyHardMiner()(x.float(), y))


def test_defaults_are_pmls():
    ours, pml = BatchEasyHardMiner(), miners.BatchEasyHardMiner()
    assert (ours.pos_strategy, ours.neg_strategy) == (pml.pos_strategy, pml.neg_strategy)
    assert ours.allowed_pos_range is pml.allowed_pos_range is None


@pytest.mark.parametrize("kwargs, message", [
    (dict(pos_strategy="hardest"), "batch_easy_hard: pos_strategy"),
    (dict(neg_strategy="medium"), "batch_easy_hard: neg_strategy"),
    (dict(pos_strategy="semihard", neg_strategy="semihard"), "batch_easy_hard: pos_strategy and neg_strategy"),
    (dict(pos_strategy="all", neg_strategy="semihard"), "batch_easy_hard: pos_strategy/neg_strategy 'semihard'"),
    (dict(pos_strategy="semihard", neg_strategy="all"), "batch_easy_hard: pos_strategy/neg_strategy 'semihard'"),
    (dict(allowed_pos_range=(1.0, 0.5)), "batch_easy_hard: allowed_pos_range"),
    (dict(allowed_neg_range=(0.1, float("inf"))), "batch_easy_hard: allowed_neg_range"),
    (dict(allowed_neg_range=(0.1,)), "batch_easy_hard: allowed_neg_range"),
    (dict(distance="dot"), "batch_easy_hard: distance"),
    (dict(distance="cosine", normalize=False), "batch_easy_hard: normalize"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BatchEasyHardMiner(**kwargs)


@pytest.mark.parametrize("params", [{}, {"pos_strategy": "hard", "neg_strategy": "all"},
                                    {"pos_strategy": "semihard", "neg_strategy": "hard", "distance": "cosine"},
                                    {"allowed_pos_range": [0.1, 1.2], "normalize": False}])
def test_conforms_to_the_miner_contract(params):
    check_miner(BatchEasyHardMiner, params)
