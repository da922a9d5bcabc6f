"""PackagedTripletsMiner against PML's EmbeddingsAlreadyPackagedAsTriplets, and with the fixed_triplets sampler."""

import numpy as np
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses, miners

from hvkit.testing import check_miner
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.miners.packaged_triplets import PackagedTripletsMiner
from hvkit_plugins.samplers.fixed_triplets import FixedTripletSampler


def packed_batch(seed: int, triplets: int = 11, dim: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    labels = np.arange(60) % 9
    sampler = FixedTripletSampler(labels, 3 * triplets, seed=seed, triplets=triplets)
    [rows] = list(sampler)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(rows), dim, generator=g, dtype=torch.float64), torch.as_tensor(labels[rows])


@pytest.mark.parametrize("seed", range(4))
def test_on_a_packed_batch_the_triplets_of_pml(seed):
    x, y = packed_batch(seed)
    ours = PackagedTripletsMiner()(x, y)
    pml = miners.EmbeddingsAlreadyPackagedAsTriplets()(x, y)
    assert len(ours[0]) == 11
    for a, b in zip(ours, pml):
        assert torch.equal(a, b.to(a.dtype))


@pytest.mark.parametrize("seed", range(3))
def test_triplet_loss_over_them_equals_pml_and_the_float64_formula(seed):
    x, y = packed_batch(seed)
    x.requires_grad_(True)
    ours = TripletLoss(margin=0.2)(x, y, PackagedTripletsMiner()(x, y))
    pml = pml_losses.TripletMarginLoss(margin=0.2)(x, y, miners.EmbeddingsAlreadyPackagedAsTriplets()(x, y))
    z = torch.nn.functional.normalize(x.detach(), dim=1).reshape(-1, 3, x.shape[1])
    per_triplet = torch.relu((z[:, 0] - z[:, 1]).norm(dim=1) - (z[:, 0] - z[:, 2]).norm(dim=1) + 0.2)
    assert (per_triplet > 0).sum() >= 2
    assert torch.allclose(ours, per_triplet[per_triplet > 0].mean(), atol=1e-12)
    assert torch.allclose(ours, pml, atol=1e-12)
    ours.backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_an_invalid_packed_triplet_and_the_trailing_rows_are_left_out():
    y = torch.tensor([0, 0, 1,   2, 3, 4,   5, 5, 5,   6, 6, 7,   8, 8])
    a, p, n = PackagedTripletsMiner()(torch.zeros(14, 2), y)
    assert a.tolist() == [0, 9] and p.tolist() == [1, 10] and n.tolist() == [2, 11]
    empty = PackagedTripletsMiner()(torch.zeros(2, 2), torch.tensor([0, 0]))
    assert all(t.numel() == 0 and t.dtype == torch.int64 for t in empty)


def test_conformance_and_a_mismatched_batch():
    check_miner(PackagedTripletsMiner)
    with pytest.raises(ValueError, match=r"^packaged_triplets: 6 embeddings but 5 labels$"):
        PackagedTripletsMiner()(torch.zeros(6, 2), torch.zeros(5, dtype=torch.int64))
