"""Margin loss: value and gradients (embeddings and beta) against PML, hand-computed case, edges, errors."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.margin import MarginLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 1, 2, 0, 4])
MINED = (torch.tensor([0, 1, 3, 7]), torch.tensor([3, 5, 8, 2]), torch.tensor([1, 0, 9, 4]))


def _batch(n: int = 10, d: int = 6, seed: int = 6) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


@pytest.mark.parametrize("indices_tuple", [None, MINED])
@pytest.mark.parametrize(("per_class_beta", "nu"), [(False, 0.0), (False, 0.1), (True, 0.1)])
def test_value_and_gradients_equal_pml(indices_tuple, per_class_beta, nu):
    ours = MarginLoss(per_class_beta=per_class_beta, nu=nu, num_classes=5)
    pml = pml_losses.MarginLoss(margin=0.2, nu=nu, beta=1.2, learn_beta=True,
                                num_classes=5 if per_class_beta else None, triplets_per_anchor="all")
    x = _batch()
    a, b = ours(x, LABELS, indices_tuple), pml(x, LABELS, indices_tuple)
    torch.testing.assert_close(a, b)
    (beta,) = ours.parameters()
    grads_a = torch.autograd.grad(a, (x, beta))
    grads_b = torch.autograd.grad(b, (x, pml.beta))
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(ga, gb)
    assert grads_a[1].abs().sum() > 0


def test_hand_computed_triplet():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    # (a=0, p=1, n=2): D_ap = sqrt(2), D_an = 0 -> (0.2 + 1.414 - 1.2)_+ + (0.2 + 1.2 - 0)_+; divisor 2
    loss = MarginLoss(learn_beta=False)(x, labels, (torch.tensor([0]), torch.tensor([1]), torch.tensor([2])))
    assert loss.item() == pytest.approx((0.2 + 2 ** 0.5 - 1.2 + 0.2 + 1.2) / 2)


def test_beta_is_learnable_only_when_asked():
    assert [p.shape for p in MarginLoss().parameters()] == [torch.Size([1])]
    assert [p.shape for p in MarginLoss(per_class_beta=True, num_classes=5).parameters()] == [torch.Size([5])]
    assert list(MarginLoss(learn_beta=False).parameters()) == []


@pytest.mark.parametrize("labels", [[2] * 10, list(range(10))])
def test_batches_without_triplets_give_zero(labels):
    x = _batch()
    loss = MarginLoss()(x, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(x.grad).all()


def test_all_equal_embeddings_give_a_finite_value():
    x = torch.ones(10, 6, requires_grad=True)
    loss = MarginLoss()(x, LABELS)
    loss.backward()
    assert loss.item() == pytest.approx(1.4) and torch.isfinite(x.grad).all()  # (0.2 + 1.2 - 0)_+ per triplet


@pytest.mark.parametrize("params", [{}, {"per_class_beta": True}])
def test_conforms_on_edge_batches(params):
    check_loss(MarginLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": -0.1}, "margin"), ({"nu": -1.0}, "nu"), ({"per_class_beta": True}, "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MarginLoss(**kwargs)
