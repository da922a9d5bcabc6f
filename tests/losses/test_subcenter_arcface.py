"""Sub-center ArcFace: value against PML (degrees) and a float64 re-derivation, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.subcenter_arcface import SubCenterArcFaceLoss

from .pair_batch import assert_same_classifier_as_pml

MINED = (torch.tensor([0, 1]), torch.tensor([3, 5]), torch.tensor([2, 2]))  # a miner's triplets
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 3, 2])


def _batch(n: int = 8, d: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _subcenter(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, k: int, m: float, s: float) -> float:
    """Deng et al. 2020: cos_j = max over the K sub-centers of class j, then ArcFace on cos_j."""
    x = x.detach().double()
    cos = (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=0, keepdim=True))
    cos = cos.view(len(x), -1, k).amax(dim=2)
    total = 0.0
    for row, yi in zip(cos.tolist(), labels.tolist()):
        theta = math.acos(row[yi])
        row[yi] = math.cos(theta + m) if theta <= math.pi - m else row[yi] - m * math.sin(m)
        total += math.log(sum(math.exp(s * (c - row[yi])) for c in row))
    return total / len(x)


@pytest.mark.parametrize("sub_centers", [1, 3])
def test_value_equals_pml_in_degrees_and_float64_derivation(sub_centers):
    ours = SubCenterArcFaceLoss(embedding_dim=5, num_classes=4, sub_centers=sub_centers).double()
    pml = pml_losses.SubCenterArcFaceLoss(num_classes=4, embedding_size=5, margin=math.degrees(0.5),
                                          scale=64, sub_centers=sub_centers).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    value = ours(x, LABELS)
    torch.testing.assert_close(value, pml(x, LABELS))
    w = ours.weight.detach().T
    assert value.item() == pytest.approx(_subcenter(x, LABELS, w, sub_centers, 0.5, 64.0), rel=1e-10)


@pytest.mark.parametrize("mined", [None, MINED])
def test_gradients_equal_pmls(mined):
    ours = SubCenterArcFaceLoss(embedding_dim=5, num_classes=4, scale=16.0).double()
    pml = pml_losses.SubCenterArcFaceLoss(num_classes=4, embedding_size=5, margin=math.degrees(0.5), scale=16,
                                          sub_centers=3).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    assert_same_classifier_as_pml(ours, pml, x, LABELS, mined)


def test_three_sub_centers_per_class_are_trainable_parameters():
    loss = SubCenterArcFaceLoss(embedding_dim=5, num_classes=4)
    assert [p.shape for p in loss.parameters()] == [torch.Size([12, 5])]
    loss(_batch(), LABELS).backward()
    assert loss.weight.grad is not None and loss.weight.grad.abs().sum() > 0


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(SubCenterArcFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 28.6}, "radians"), ({"sub_centers": 0}, "sub_centers"), ({"scale": -1.0}, "scale"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SubCenterArcFaceLoss(**{"embedding_dim": 5, "num_classes": 4, **kwargs})


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        SubCenterArcFaceLoss(embedding_dim=5, num_classes=4)(_batch(), LABELS * 2)
