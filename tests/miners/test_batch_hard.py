"""BatchHardMiner against pytorch-metric-learning's BatchHardMiner and a hand-made case."""

import pytest
import torch
from pytorch_metric_learning import miners
from pytorch_metric_learning.distances import LpDistance

from hvkit.testing import check_miner
from hvkit_plugins.miners.batch_hard import BatchHardMiner


def random_batch(seed, b=24, d=8, classes=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=g, dtype=torch.float64), torch.randint(classes, (b,), generator=g)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_same_triplets_as_pml(normalize, seed):
    x, y = random_batch(seed)
    ours = BatchHardMiner(normalize=normalize)(x, y)
    pml = miners.BatchHardMiner(distance=LpDistance(normalize_embeddings=normalize))(x, y)
    assert len(ours) == 3
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_with_a_reference_set_the_triplets_of_pml(normalize, seed):
    x, y = random_batch(seed)
    r, ry = random_batch(100 + seed, b=40)
    ours = BatchHardMiner(normalize=normalize)(x, y, ref_emb=r, ref_labels=ry)
    pml = miners.BatchHardMiner(distance=LpDistance(normalize_embeddings=normalize))(x, y, r, ry)
    assert len(ours) == 3 and len(ours[0]) > 0 and ours[1].max() >= len(y)
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


def test_a_copy_of_the_batch_as_reference_is_a_positive_only_when_alone():
    x = torch.tensor([[0.0], [1.0], [3.0], [9.0]])
    y = torch.tensor([0, 0, 1, 2])
    a, p, n = BatchHardMiner(normalize=False)(x, y, ref_emb=x.clone(), ref_labels=y.clone())
    assert a.tolist() == [0, 1, 2, 3] and p.tolist() == [1, 0, 2, 3] and n.tolist() == [2, 2, 1, 2]


def test_hand_made_case_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [1.5], [2.1], [9.0]])
    y = torch.tensor([0, 0, 0, 1, 1, 2])
    a, p, n = BatchHardMiner(normalize=False)(x, y)
    assert a.tolist() == [0, 1, 2, 3, 4]  # anchor 5 has no positive
    assert p.tolist() == [2, 2, 0, 4, 3]
    assert n.tolist() == [3, 3, 4, 1, 2]


def test_no_triplets_without_negatives():
    a, p, n = BatchHardMiner()(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))
    assert a.numel() == p.numel() == n.numel() == 0


def test_float16_on_normalised_embeddings():
    x, y = random_batch(0)
    a, p, n = BatchHardMiner()(x.half(), y)
    assert (y[p] == y[a]).all() and (y[n] != y[a]).all() and (p != a).all()


def test_conforms_to_the_miner_contract():
    check_miner(BatchHardMiner)
    check_miner(BatchHardMiner, {"normalize": False})
