"""SemiHardMiner against TripletMarginMiner(type_of_triplets="semihard") and a hand-enumerated case."""

import pytest
import torch
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.semi_hard import SemiHardMiner

# Points on a line: the semi-hard triplets (0 < d_an - d_ap <= 0.2) are enumerated by hand.
LINE = torch.tensor([[0.0], [1.0], [1.1], [1.15], [0.5], [3.0]], dtype=torch.float64)
LINE_LABELS = torch.tensor([0, 0, 1, 2, 1, 2])
ALL = [(0, 1, 2), (0, 1, 3), (4, 2, 3), (5, 3, 1), (5, 3, 2)]
HARDEST = [(0, 1, 2), (4, 2, 3), (5, 3, 2)]


def triplets(indices):
    return list(zip(*(t.tolist() for t in indices)))


def random_batch(seed, b=24, d=8, classes=5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(classes, (b,), generator=g)


@pytest.mark.parametrize("normalize, squared, margin", [
    (True, False, 0.2), (True, True, 0.3), (False, False, 1.0), (False, True, 2.0)])
@pytest.mark.parametrize("seed", range(3))
def test_all_equals_pml_semihard(normalize, squared, margin, seed):
    x, y = random_batch(seed)
    ours = SemiHardMiner(margin=margin, normalize=normalize, squared=squared)(x, y)
    distance = LpDistance(normalize_embeddings=normalize, power=2 if squared else 1)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                    distance=distance)(x, y)
    assert len(ours[0]) > 0
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


@pytest.mark.parametrize("normalize, squared, margin", [(True, False, 0.2), (False, True, 2.0)])
@pytest.mark.parametrize("seed", range(2))
def test_with_a_reference_set_all_equals_pml_semihard(normalize, squared, margin, seed):
    x, y = random_batch(seed)
    r, ry = random_batch(100 + seed, b=40)
    ours = SemiHardMiner(margin=margin, normalize=normalize, squared=squared)(x, y, ref_emb=r, ref_labels=ry)
    distance = LpDistance(normalize_embeddings=normalize, power=2 if squared else 1)
    pml = miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard", distance=distance)(x, y, r, ry)
    assert len(ours[0]) > 0 and ours[2].max() >= len(y)
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)
    hardest = SemiHardMiner(margin=margin, negatives="hardest", normalize=normalize, squared=squared)
    a, p, n = hardest(x, y, ref_emb=r, ref_labels=ry)
    assert set(zip(a.tolist(), p.tolist())) == set(zip(ours[0].tolist(), ours[1].tolist()))
    assert set(zip(a.tolist(), p.tolist(), n.tolist())) <= set(triplets(ours))


def test_hand_enumerated_all_and_hardest():
    assert triplets(SemiHardMiner(normalize=False)(LINE, LINE_LABELS)) == ALL
    assert triplets(SemiHardMiner(negatives="hardest", normalize=False)(LINE, LINE_LABELS)) == HARDEST


def test_hardest_is_the_nearest_semi_hard_negative_of_each_pair():
    x, y = random_batch(7)
    everything = triplets(SemiHardMiner(margin=0.5)(x, y))
    hardest = triplets(SemiHardMiner(margin=0.5, negatives="hardest")(x, y))
    d = torch.cdist(torch.nn.functional.normalize(x), torch.nn.functional.normalize(x))
    expected = {}
    for a, p, n in everything:
        if (a, p) not in expected or d[a, n] < d[a, expected[(a, p)]]:
            expected[(a, p)] = n
    assert hardest == sorted((a, p, n) for (a, p), n in expected.items())


@pytest.mark.parametrize("kwargs, message", [
    (dict(margin=0.0), "margin"), (dict(negatives="easy"), "negatives")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SemiHardMiner(**kwargs)


@pytest.mark.parametrize("params", [{}, {"negatives": "hardest", "squared": True, "margin": 0.5}])
def test_conforms_to_the_miner_contract(params):
    check_miner(SemiHardMiner, params)
