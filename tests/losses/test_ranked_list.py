"""Ranked list loss: value and gradient against PML RankedListLoss, the paper's formula in float64, a hand-computed
case, where it deliberately differs from PML (distance 0, overflow), edges."""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.ranked_list import RankedListLoss

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients,
                         batch, training_values)

SETTINGS = [  # the paper's RLL-Simpler (alpha 1.2); Tp and a set alpha with lambda 0.3; a wide margin
    {"margin": 0.4, "Tn": 10.0}, {"margin": 0.4, "Tn": 1.0, "imbalance": 0.3, "alpha": 1.0, "Tp": 2.0},
    {"margin": 1.0, "Tn": 3.0, "Tp": 1.0}]


def _pml(**settings) -> torch.nn.Module:
    with warnings.catch_warnings():  # PML warns about temperatures above 5
        warnings.simplefilter("ignore")
        return pml_losses.RankedListLoss(**settings)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
def test_value_and_gradient_equal_pml(dtype, settings):
    x = batch(dtype=dtype)
    a = RankedListLoss(**settings)(x, LABELS)
    b = _pml(**settings)(x, LABELS)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("labels", [torch.zeros(12, dtype=torch.long), torch.arange(12)])
def test_one_writer_and_all_singletons_equal_pml(labels):
    x = batch()  # one writer: positives only; all singletons: negatives only
    a = RankedListLoss(0.4, 10.0)(x, labels)
    b = _pml(margin=0.4, Tn=10.0)(x, labels)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("indices_tuple", TUPLES)
def test_a_miner_is_refused_as_in_pml(indices_tuple):
    x = batch()
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        _pml(margin=0.4, Tn=10.0)(x, LABELS, indices_tuple)
    with pytest.raises(ValueError, match="^ranked_list: .*remove the miner"):
        RankedListLoss()(x, LABELS, indices_tuple)


def _paper_reference(x: list[list[float]], labels: list[int], margin: float, Tn: float, imbalance: float = 0.5,
                     alpha: float | None = None, Tp: float = 0.0) -> float:
    """Wang et al.'s Eqs. 4-8 in float64 with loops, each weight sum given PML's guard of 1e-5 per batch sample."""
    alpha = 1 + margin / 2 if alpha is None else alpha
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x]
    guard = 1e-5 * len(labels)
    total = 0.0
    for i in range(len(labels)):
        d = [math.dist(unit[i], unit[j]) for j in range(len(labels))]
        positives = [d[j] - (alpha - margin) for j in range(len(labels))
                     if j != i and labels[j] == labels[i] and d[j] > alpha - margin]
        negatives = [alpha - d[k] for k in range(len(labels)) if labels[k] != labels[i] and d[k] < alpha]
        w_p = [math.exp(Tp * v) for v in positives]
        w_n = [math.exp(Tn * v) for v in negatives]
        l_p = sum(w * v for w, v in zip(w_p, positives)) / (sum(w_p) + guard)
        l_n = sum(w * v for w, v in zip(w_n, negatives)) / (sum(w_n) + guard)
        total += (1 - imbalance) * l_p + imbalance * l_n
    return total / len(labels)


@pytest.mark.parametrize("settings", SETTINGS)
def test_equals_the_papers_formula(settings):
    x = batch()
    expected = _paper_reference(x.tolist(), LABELS.tolist(), **settings)
    assert RankedListLoss(**settings)(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # directions 0° and 90° (writer 0), 60° (writer 1): chords 2 sin(45°) = sqrt(2), 2 sin(30°) = 1, 2 sin(15°)
    angles = torch.tensor([0.0, 90.0, 60.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    guard, near = 3e-5, 1.2 - 2 * math.sin(math.radians(15))  # m 0.4, alpha 1.2: boundary 0.8; T_n 2, T_p 0

    def part(violations):
        weights = [math.exp(2 * v) for v in violations]
        return sum(w * v for w, v in zip(weights, violations)) / (sum(weights) + guard)

    pulled = (math.sqrt(2) - 0.8) / (1 + guard)  # anchors 0 and 1: each other, 1.414 > 0.8; anchor 2: none
    expected = (2 * pulled + part([0.2]) + part([near]) + part([0.2, near])) / 2 / 3
    assert RankedListLoss(0.4, 2.0)(x, labels).item() == pytest.approx(expected, rel=1e-12)


def test_a_negative_at_distance_zero_counts_unlike_pml():
    x = batch().detach()
    x[4] = x[0]  # writers 0 and 3 at one point: the most violating negative pair there is
    x.requires_grad_()
    ours = RankedListLoss(0.4, 10.0)(x, LABELS)
    assert ours.item() == pytest.approx(_paper_reference(x.tolist(), LABELS.tolist(), 0.4, 10.0), rel=1e-10)
    assert ours.item() > _pml(margin=0.4, Tn=10.0)(x, LABELS).item() + 0.01  # PML drops the pair (0, 4)
    ours.backward()
    assert torch.isfinite(x.grad).all()


def test_large_temperatures_do_not_overflow():
    x = batch(dtype=torch.float32)  # exp(100 * 1.2) overflows float32: PML gives NaN
    settings = {"margin": 0.4, "Tn": 100.0, "Tp": 100.0}
    assert torch.isnan(_pml(**settings)(x, LABELS))
    value = RankedListLoss(**settings)(x, LABELS)
    value.backward()
    assert value.item() == pytest.approx(_paper_reference(x.tolist(), LABELS.tolist(), **settings), rel=1e-5)
    assert torch.isfinite(x.grad).all()


def test_a_single_sample_gives_zero():
    x = batch(1)
    value = RankedListLoss()(x, torch.tensor([3]))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: RankedListLoss(0.4, 1.0, Tp=2.0)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(RankedListLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(RankedListLoss())
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(RankedListLoss, {})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": -0.1}, "margin"), ({"imbalance": 1.5}, "imbalance"), ({"alpha": 0.3}, "alpha"),
    ({"alpha": 0.0, "margin": 0.0}, "alpha"), ({"Tn": -1.0}, "Tn"), ({"Tp": math.inf}, "Tp")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^ranked_list: {message}"):
        RankedListLoss(**kwargs)
