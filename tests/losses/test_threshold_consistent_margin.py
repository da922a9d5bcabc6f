"""Threshold-consistent margin loss: value and gradient against PML ThresholdConsistentMarginLoss (with tuples too),
the paper's formula in float64 (with a reference set too), a hand-computed case, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from hvkit.testing import check_loss
from hvkit_plugins.losses.threshold_consistent_margin import ThresholdConsistentMarginLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

SETTINGS = [{}, {"lambda_plus": 0.5, "lambda_minus": 2.0, "margin_plus": 0.3, "margin_minus": -0.2}]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, settings, indices_tuple):
    x = batch(dtype=dtype)
    a = ThresholdConsistentMarginLoss(**settings)(x, LABELS, indices_tuple)
    b = pml_losses.ThresholdConsistentMarginLoss(**settings)(x, LABELS, indices_tuple)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


def test_repeated_pairs_count_as_in_pml():
    x = batch()
    triplets = (torch.tensor([0, 0, 0, 3, 3, 1]), torch.tensor([3, 3, 8, 0, 0, 5]), torch.tensor([1, 2, 1, 1, 1, 0]))
    a = ThresholdConsistentMarginLoss(margin_minus=-0.5)(x, LABELS, triplets)
    b = pml_losses.ThresholdConsistentMarginLoss(margin_minus=-0.5)(x, LABELS, triplets)
    assert_same_value_and_gradients(a, b, (x,))


def _paper_reference(x: list[list[float]], labels: list[int], ref: list[list[float]], ref_labels: list[int],
                     pairs: list[tuple[int, int]], lambda_plus: float = 1.0, lambda_minus: float = 1.0,
                     margin_plus: float = 0.9, margin_minus: float = 0.5) -> float:
    """Zhang et al. 2024, Eq. 4, in float64 with loops over the given (anchor, partner) pairs."""
    def cosine(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    pulls, pushes = [], []
    for i, j in pairs:
        s = cosine(x[i], ref[j])
        if labels[i] == ref_labels[j] and s <= margin_plus:
            pulls.append(margin_plus - s)
        elif labels[i] != ref_labels[j] and s >= margin_minus:
            pushes.append(s - margin_minus)
    def mean(terms: list[float]) -> float:
        return sum(terms) / len(terms) if terms else 0.0

    return lambda_plus * mean(pulls) + lambda_minus * mean(pushes)


@pytest.mark.parametrize("settings", SETTINGS)
def test_equals_the_papers_formula(settings):
    x = batch()
    pairs = [(i, j) for i in range(12) for j in range(12) if i != j]
    expected = _paper_reference(x.tolist(), LABELS.tolist(), x.tolist(), LABELS.tolist(), pairs, **settings)
    assert ThresholdConsistentMarginLoss(**settings)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_equals_the_papers_formula(indices_tuple):
    # PML takes the reference's labels but the partners' embeddings from the batch: the paper's pairs are the reference
    x, r = batch(), reference()
    if indices_tuple is None:
        pairs = [(i, j) for i in range(12) for j in range(16)]
    else:
        a1, p, a2, n = lmu.convert_to_pairs(indices_tuple, LABELS)
        pairs = list(zip(a1.tolist(), p.tolist())) + list(zip(a2.tolist(), n.tolist()))
    expected = _paper_reference(x.tolist(), LABELS.tolist(), r.tolist(), REF_LABELS.tolist(), pairs,
                                margin_minus=-0.3)
    value = ThresholdConsistentMarginLoss(margin_minus=-0.3)(x, LABELS, indices_tuple, ref_emb=r,
                                                             ref_labels=REF_LABELS)
    assert value.item() == pytest.approx(expected, rel=1e-12) and expected > 0
    assert all(g.abs().sum() > 0 for g in torch.autograd.grad(value, (x, r)))


def test_hand_computed_case():
    # x0 at 0°, x1 at 60° (writer 0), x2 at 90° (writer 1): cosines 1/2 (0, 1), 0 (0, 2), √3/2 (1, 2)
    angles = torch.tensor([0.0, 60.0, 90.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # the positive pair (both orders) at 1/2 <= 0.9; of the negatives only (1, 2) and (2, 1) reach 0.5
    expected = (0.9 - 0.5) + 2.0 * (math.sqrt(3) / 2 - 0.5)
    assert ThresholdConsistentMarginLoss(lambda_minus=2.0)(x, labels).item() == pytest.approx(expected, rel=1e-12)


def test_a_batch_of_one_writer_pulls_only():
    x = batch()
    same = torch.zeros(12, dtype=torch.long)
    value = ThresholdConsistentMarginLoss()(x, same)
    torch.testing.assert_close(value, pml_losses.ThresholdConsistentMarginLoss()(x, same))
    value.backward()
    assert value.item() > 0 and torch.isfinite(x.grad).all()


def test_no_pair_beyond_a_margin_gives_zero_with_finite_gradients():
    x = batch()
    value = ThresholdConsistentMarginLoss(margin_plus=-1.0, margin_minus=1.0)(x, LABELS)  # nothing past ±1
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: ThresholdConsistentMarginLoss(**SETTINGS[1])(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(ThresholdConsistentMarginLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(ThresholdConsistentMarginLoss())
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(ThresholdConsistentMarginLoss, {})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lambda_plus": -1.0}, "lambda_plus"), ({"lambda_minus": -0.1}, "lambda_minus"),
    ({"margin_plus": 1.5}, "margin_plus"), ({"margin_minus": -2.0}, "margin_minus")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^threshold_consistent_margin: {message}"):
        ThresholdConsistentMarginLoss(**kwargs)
