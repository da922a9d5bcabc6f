"""MultiSimilarityMiner: pytorch-metric-learning's miner with hvkit's typed signature."""

import pytest
import torch
from pytorch_metric_learning import miners

from hvkit.testing import check_miner
from hvkit_plugins.miners.multi_similarity import MultiSimilarityMiner


@pytest.mark.parametrize("epsilon", [0.1, 0.3])
def test_same_pairs_as_pml(epsilon):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 8, generator=g), torch.arange(32) % 6
    ours = MultiSimilarityMiner(epsilon=epsilon)(x, y)
    pml = miners.MultiSimilarityMiner(epsilon=epsilon)(x, y)
    assert len(ours) == 4
    for a, b in zip(ours, pml):
        assert torch.equal(a, b)


def test_default_epsilon_is_the_papers():
    assert MultiSimilarityMiner().epsilon == 0.1


def test_negative_epsilon_raises():
    with pytest.raises(ValueError, match="epsilon"):
        MultiSimilarityMiner(epsilon=-0.1)


def test_conforms_to_the_miner_contract():
    check_miner(MultiSimilarityMiner, {"epsilon": 0.2})
