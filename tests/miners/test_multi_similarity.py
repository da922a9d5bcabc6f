"""MultiSimilarityMiner: the pairs of pytorch-metric-learning's, in its order, with and without a reference set."""

import pytest
import torch
from pytorch_metric_learning import miners

from hvkit.testing import check_miner
from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner


@pytest.mark.parametrize("epsilon, batch, classes", [(0.1, 32, 6), (0.3, 32, 6), (0.05, 256, 40)])
def test_same_pairs_as_pml(epsilon, batch, classes):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(batch, 8, generator=g), torch.arange(batch) % classes
    ours = MultiSimilarityMiner(epsilon=epsilon)(x, y)
    pml = miners.MultiSimilarityMiner(epsilon=epsilon)(x, y)
    assert len(ours) == 4
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_with_a_reference_set_the_pairs_of_pml(epsilon):
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 8, generator=g), torch.arange(32) % 6
    r, ry = torch.randn(50, 8, generator=g), torch.randint(7, (50,), generator=g)
    ours = MultiSimilarityMiner(epsilon=epsilon)(x, y, ref_emb=r, ref_labels=ry)
    pml = miners.MultiSimilarityMiner(epsilon=epsilon)(x, y, r, ry)
    assert len(ours[0]) > 0 and ours[3].max() >= 32
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


def test_with_a_copy_of_the_batch_as_reference_row_i_pairs_with_row_i():
    g = torch.Generator().manual_seed(2)
    x, y = torch.randn(16, 4, generator=g), torch.arange(16) % 4
    a1, p, _, _ = MultiSimilarityMiner(epsilon=2.0)(x, y, ref_emb=x.clone(), ref_labels=y.clone())
    assert sorted(zip(a1.tolist(), p.tolist())) == [(i, j) for i in range(16) for j in range(16) if y[i] == y[j]]


def test_a_reference_without_labels_raises():
    x, y = torch.randn(8, 4), torch.arange(8) % 2
    with pytest.raises(ValueError, match="multi_similarity: ref_emb was given without ref_labels"):
        MultiSimilarityMiner()(x, y, ref_emb=x)


def test_default_epsilon_is_the_papers():
    assert MultiSimilarityMiner().epsilon == 0.1


def test_negative_epsilon_raises():
    with pytest.raises(ValueError, match="epsilon"):
        MultiSimilarityMiner(epsilon=-0.1)


def test_conforms_to_the_miner_contract():
    check_miner(MultiSimilarityMiner, {"epsilon": 0.2})
