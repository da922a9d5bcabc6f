"""Tuplet margin loss: value and gradient against PML TupletMarginLoss (with tuples and a reference set too), the
paper's formula in float64, a hand-computed case, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.tuplet_margin import TupletMarginLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

SETTINGS = [(5.73, 64.0), (20.0, 8.0)]  # PML's defaults; a wide margin and small scale that keep every term alive


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("margin", "scale"), SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, margin, scale, indices_tuple):
    x = batch(dtype=dtype)
    a = TupletMarginLoss(margin, scale)(x, LABELS, indices_tuple)
    b = pml_losses.TupletMarginLoss(margin=margin, scale=scale)(x, LABELS, indices_tuple)
    assert a.dtype == dtype and (b.item() > 0 or scale == 64)  # at s = 64 the mined pairs' terms may underflow
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize(("margin", "scale"), SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(margin, scale, indices_tuple):
    x, r = batch(), reference()
    a = TupletMarginLoss(margin, scale)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = pml_losses.TupletMarginLoss(margin=margin, scale=scale)(x, LABELS, indices_tuple, ref_emb=r,
                                                                ref_labels=REF_LABELS)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def test_repeated_pairs_count_as_in_pml():
    x = batch()  # a triplet miner repeats (anchor, positive) and (anchor, negative) pairs
    triplets = (torch.tensor([0, 0, 0, 3, 3, 1]), torch.tensor([3, 3, 8, 0, 0, 5]), torch.tensor([1, 2, 1, 1, 1, 0]))
    a = TupletMarginLoss(20.0, 8.0)(x, LABELS, triplets)
    b = pml_losses.TupletMarginLoss(margin=20.0, scale=8.0)(x, LABELS, triplets)
    assert_same_value_and_gradients(a, b, (x,))


def _paper_reference(x: list[list[float]], labels: list[int], margin: float, scale: float) -> float:
    """Yu & Tao's Eq. 5 in float64 with loops: log(1 + sum_n exp(s (cos θ_an - cos(θ_ap - β)))) per positive pair,
    averaged over the positive pairs."""
    def cosine(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    terms = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            slack = math.cos(math.acos(cosine(x[a], x[p])) - math.radians(margin))
            total = sum(math.exp(scale * (cosine(x[a], x[n]) - slack)) for n in range(len(labels))
                        if labels[n] != labels[a])
            terms.append(math.log1p(total))
    return sum(terms) / len(terms)


@pytest.mark.parametrize(("margin", "scale"), SETTINGS)
def test_equals_the_papers_formula(margin, scale):
    x = batch()
    expected = _paper_reference(x.tolist(), LABELS.tolist(), margin, scale)
    assert TupletMarginLoss(margin, scale)(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # x0 at 0°, x1 at 60° (label 0), x2 at 180° (label 1); margin 30°: cos(60° - 30°) = sqrt(3)/2
    angles = torch.tensor([0.0, 60.0, 180.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # pair (0, 1): negative x2 at cos -1; pair (1, 0): x2 at cos(120°) = -1/2; anchor 2 has no positive
    expected = (math.log1p(math.exp(2 * (-1 - math.sqrt(3) / 2)))
                + math.log1p(math.exp(2 * (-0.5 - math.sqrt(3) / 2)))) / 2
    assert TupletMarginLoss(30.0, 2.0)(x, labels).item() == pytest.approx(expected, rel=1e-12)


def test_a_batch_of_one_writer_gives_zero():
    x = batch()
    same = torch.zeros(12, dtype=torch.long)
    value = TupletMarginLoss()(x, same)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: TupletMarginLoss(20.0, 8.0)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(TupletMarginLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(TupletMarginLoss())
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(TupletMarginLoss, {})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": -1.0}, "margin"), ({"margin": 90.0}, "margin"), ({"scale": 0.0}, "scale")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^tuplet_margin: {message}"):
        TupletMarginLoss(**kwargs)
