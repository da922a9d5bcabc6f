"""CosFace: value against PML and a float64 re-derivation, trainable weights, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.cosface import CosFaceLoss

from .pair_batch import assert_same_classifier_as_pml

MINED = (torch.tensor([0, 1]), torch.tensor([3, 5]), torch.tensor([2, 2]))  # a miner's triplets
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _cosface(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, m: float, s: float) -> float:
    """Wang et al. 2018, Eq. 4: -log(e^{s(cos_y - m)} / (e^{s(cos_y - m)} + sum_{j != y} e^{s cos_j}))."""
    total = 0.0
    for xi, yi in zip(x.detach().double(), labels.tolist()):
        cos = [float(xi @ w[:, j] / (xi.norm() * w[:, j].norm())) for j in range(w.shape[1])]
        target = math.exp(s * (cos[yi] - m))
        total -= math.log(target / (target + sum(math.exp(s * c) for j, c in enumerate(cos) if j != yi)))
    return total / len(labels)


def test_defaults_are_the_papers():
    loss = CosFaceLoss(embedding_dim=6, num_classes=5)
    assert (loss.margin, loss.scale) == (0.35, 64.0)


@pytest.mark.parametrize(("margin", "scale"), [(0.35, 64.0), (0.35, 30.0), (0.2, 16.0)])
def test_value_equals_pml_and_float64_derivation(margin, scale):
    ours = CosFaceLoss(embedding_dim=6, num_classes=5, margin=margin, scale=scale).double()
    pml = pml_losses.CosFaceLoss(num_classes=5, embedding_size=6, margin=margin, scale=scale).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    value = ours(x, LABELS)
    torch.testing.assert_close(value, pml(x, LABELS))
    assert value.item() == pytest.approx(_cosface(x, LABELS, ours.weight.detach().T, margin, scale), rel=1e-9)


@pytest.mark.parametrize("mined", [None, MINED])
def test_gradients_equal_pmls(mined):
    ours = CosFaceLoss(embedding_dim=6, num_classes=5, margin=0.3, scale=20.0).double()
    pml = pml_losses.CosFaceLoss(num_classes=5, embedding_size=6, margin=0.3, scale=20).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    assert_same_classifier_as_pml(ours, pml, x, LABELS, mined)


def test_weights_are_parameters_that_receive_gradients():
    loss = CosFaceLoss(embedding_dim=6, num_classes=5)
    assert [p.shape for p in loss.parameters()] == [torch.Size([5, 6])]
    loss(_batch(), LABELS).backward()
    assert loss.weight.grad is not None and loss.weight.grad.abs().sum() > 0


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(CosFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 1.5}, "margin"), ({"margin": -0.1}, "margin"), ({"scale": 0.0}, "scale"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CosFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match="num_classes"):
        CosFaceLoss(embedding_dim=6, num_classes=5)(_batch(), LABELS - 1)
