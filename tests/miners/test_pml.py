"""PMLMiner: any pytorch-metric-learning miner by class name, with helpful errors."""

import pytest
import torch
from pytorch_metric_learning import miners

from hvkit.testing import check_miner
from hvkit_plugins.miners.pml import PMLMiner


def test_builds_the_named_miner_with_its_params():
    wrapper = PMLMiner("PairMarginMiner", {"pos_margin": 0.3, "neg_margin": 0.6})
    assert isinstance(wrapper.miner, miners.PairMarginMiner)
    assert (wrapper.miner.pos_margin, wrapper.miner.neg_margin) == (0.3, 0.6)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 6, generator=g), torch.arange(20) % 4
    expected = miners.PairMarginMiner(pos_margin=0.3, neg_margin=0.6)(x, y)
    for a, b in zip(wrapper(x, y), expected):
        assert torch.equal(a, b)


def test_passes_a_reference_set_through():
    wrapper = PMLMiner("BatchEasyHardMiner", {"pos_strategy": "hard", "neg_strategy": "hard"})
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 6, generator=g), torch.arange(20) % 4
    r, ry = torch.randn(30, 6, generator=g), torch.arange(30) % 5
    expected = miners.BatchEasyHardMiner("hard", "hard")(x, y, r, ry)
    mined = wrapper(x, y, ref_emb=r, ref_labels=ry)
    assert wrapper.accepts_reference and mined[1].max() >= 20
    for a, b in zip(mined, expected):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="pml: ref_emb was given without ref_labels"):
        wrapper(x, y, ref_emb=r)


def test_params_default_to_pmls():
    assert PMLMiner("TripletMarginMiner").miner.margin == miners.TripletMarginMiner().margin


def test_unknown_name_lists_the_nearest():
    with pytest.raises(ValueError, match="nearest: BatchHardMiner, BatchEasyHardMiner"):
        PMLMiner("batchhard")


def test_bad_params_name_what_the_miner_accepts():
    with pytest.raises(ValueError, match="accepts margin, type_of_triplets"):
        PMLMiner("TripletMarginMiner", {"margn": 0.1})


@pytest.mark.parametrize("name, params", [
    ("TripletMarginMiner", {"type_of_triplets": "semihard"}), ("PairMarginMiner", None)])
def test_conforms_to_the_miner_contract(name, params):
    check_miner(PMLMiner, {"miner": name, "params": params})
