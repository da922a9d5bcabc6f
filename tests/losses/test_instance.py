"""Instance loss: value and gradient against PML InstanceLoss (batches in PML's order, and any batch reordered
to it), where and why PML differs, a hand-computed float64 case, edges, errors and the loss contract."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit.testing import check_loss
from hvkit_plugins.losses.instance import InstanceLoss, first_of_label

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients,
                         batch, training_values)

GAMMAS = [64.0, 1.0, 7.5]  # PML's default; the authors' code's; another
PML_ORDER = [  # labels whose first C rows hold each of the C labels once, ascending: PML's target has the label
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],  # every label once: the paper's instances
    [0, 1, 2, 3, 4, 0, 2, 1, 1, 3, 0, 2],  # label 4 occurs once
    [2, 5, 7, 9, 5, 9, 9, 2, 7, 5, 2, 9],  # labels not 0..C-1
    [3] * 12,  # one writer
]


def pml_order(labels: torch.Tensor) -> torch.Tensor:
    """A permutation putting each label's first sample first, in ascending order of label, the rest after."""
    first = first_of_label(labels)
    exemplars = torch.unique(first)
    exemplars = exemplars[torch.argsort(labels[exemplars])]
    rest = torch.tensor([i for i in range(len(labels)) if first[i] != i], dtype=torch.int64)
    return torch.cat([exemplars, rest])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("labels", PML_ORDER)
def test_value_and_gradient_equal_pml_on_batches_in_its_order(dtype, gamma, labels):
    x, y = batch(dtype=dtype), torch.tensor(labels)
    assert torch.equal(first_of_label(y), torch.unique(y, return_inverse=True)[1])  # PML's targets
    assert_same_value_and_gradients(InstanceLoss(gamma)(x, y), pml_losses.InstanceLoss(gamma=gamma)(x, y), (x,))


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("seed", range(4))
def test_any_batch_equals_pml_on_the_same_batch_in_its_order(gamma, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 5 + 3 * seed, (12,), generator=g)  # random writers: repeats, singletons, gaps
    x = batch(seed=seed)
    order = pml_order(y)
    assert sorted(order.tolist()) == list(range(12))
    expected = pml_losses.InstanceLoss(gamma=gamma)(x[order], y[order])
    assert_same_value_and_gradients(InstanceLoss(gamma)(x, y), expected, (x,))


def test_pmls_target_is_the_labels_rank_whatever_sample_sits_there():
    x = batch()
    ours, pml = InstanceLoss(), pml_losses.InstanceLoss()
    # LABELS starts 0, 1, 2, 0: PML sends label 3's samples to row 3, a sample of label 0
    assert abs(ours(x, LABELS).item() - pml(x, LABELS).item()) > 1.0
    # renaming the writers (label c -> 4 - c) changes PML's targets, not which samples share a writer
    renamed = 4 - LABELS
    torch.testing.assert_close(ours(x, renamed), ours(x, LABELS))
    assert abs(pml(x, renamed).item() - pml(x, LABELS).item()) > 1.0


def test_first_of_label():
    assert first_of_label(torch.tensor([7, 3, 7, 1, 3, 3, 9])).tolist() == [0, 1, 0, 3, 1, 1, 6]
    assert first_of_label(LABELS).tolist() == [0, 1, 2, 0, 4, 1, 1, 2, 0, 9, 2, 4]


def test_only_the_exemplars_order_matters():
    x = batch()
    loss = InstanceLoss(5.0)
    same_exemplars = torch.tensor([0, 1, 2, 4, 9, 3, 5, 6, 7, 8, 10, 11])  # each label's first sample stays first
    torch.testing.assert_close(loss(x[same_exemplars], LABELS[same_exemplars]), loss(x, LABELS))
    other_exemplar = torch.tensor([3, 1, 2, 0, 4, 5, 6, 7, 8, 9, 10, 11])  # sample 3 becomes label 0's exemplar
    assert abs(loss(x[other_exemplar], LABELS[other_exemplar]).item() - loss(x, LABELS).item()) > 1e-3


def test_hand_computed_case():
    # cosines: s_01 = 0, s_02 = s_12 = 1/sqrt 2 (the lengths do not count); exemplars t = (0, 1, 0)
    x = torch.tensor([[3.0, 0.0], [0.0, 0.5], [2.0, 2.0]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([4, 8, 4])
    gamma, r = 2.0, 2 ** -0.5
    e = math.exp
    expected = (-math.log(e(gamma) / (e(gamma) + e(0) + e(gamma * r)))
                - math.log(e(gamma) / (e(0) + e(gamma) + e(gamma * r)))
                - math.log(e(gamma * r) / (2 * e(gamma * r) + e(gamma)))) / 3
    value = InstanceLoss(gamma)(x, y)
    assert value.dtype == torch.float64
    torch.testing.assert_close(value.item(), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(InstanceLoss(gamma)(x, torch.tensor([0, 1, 2])).item(),
                               (2 * -math.log(e(gamma) / (e(gamma) + e(0) + e(gamma * r)))
                                - math.log(e(gamma) / (2 * e(gamma * r) + e(gamma)))) / 3, rtol=1e-12, atol=0)


def test_edges():
    one = batch(1, 4)
    torch.testing.assert_close(InstanceLoss()(one, torch.tensor([0])).item(), 0.0)  # its own only candidate
    collapsed = torch.ones(6, 3, dtype=torch.float64)
    torch.testing.assert_close(InstanceLoss()(collapsed, torch.tensor([0, 0, 1, 1, 2, 2])).item(), math.log(6))


def test_gradcheck():
    x = batch(6, 3)
    assert torch.autograd.gradcheck(lambda e: InstanceLoss(3.0)(e, torch.tensor([1, 0, 1, 2, 2, 0])), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(InstanceLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(InstanceLoss(16.0))
    assert values[-1] < 0.8 * values[0]


def test_flags_and_xbm_refuses_it():
    assert InstanceLoss.needs_global_batch is True and InstanceLoss.accepts_reference is False
    with pytest.raises(ValueError, match=r"^xbm: InstanceLoss takes no reference set"):
        build(get_registry(), "loss", {"name": "xbm", "loss": "instance"}, embedding_dim=6, num_classes=5)


@pytest.mark.parametrize("indices_tuple", TUPLES)
def test_a_miner_is_refused_as_in_pml(indices_tuple):
    x = batch()
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        pml_losses.InstanceLoss()(x, LABELS, indices_tuple)
    with pytest.raises(ValueError, match="^instance: .*remove the miner$"):
        InstanceLoss()(x, LABELS, indices_tuple)


@pytest.mark.parametrize("gamma", [0.0, -1.0, math.inf, math.nan])
def test_invalid_gamma_raises(gamma):
    with pytest.raises(ValueError, match=r"^instance: gamma must be positive and finite \(default 64\)"):
        InstanceLoss(gamma)


@pytest.mark.parametrize("shape, labels", [((12, 6), 11), ((12,), 12), ((2, 6, 6), 2)])
def test_misshapen_input_raises(shape, labels):
    with pytest.raises(ValueError, match=r"^instance: expected embeddings \(B, D\) and labels \(B,\)"):
        InstanceLoss()(torch.randn(shape), torch.arange(labels))


def test_contract():
    check_loss(InstanceLoss)
    check_loss(InstanceLoss, {"gamma": 16.0})
