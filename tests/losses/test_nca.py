"""NCA loss: value and gradient against PML NCALoss (with tuples and a reference set too), Goldberger et al.'s
formula in float64, a hand-computed case, where it deliberately differs from PML, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.nca import NCALoss, anchor_weights

from .pair_batch import (ALL_PAIRS_BUT_SELF, LABELS, REF_LABELS, REF_TUPLES, TUPLES,
                         assert_full_precision_under_autocast, assert_same_value_and_gradients, batch, reference,
                         training_values)

SCALES = [1.0, 8.0]  # PML's default; a sharper softmax


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, scale, indices_tuple):
    x = batch(dtype=dtype)
    a = NCALoss(scale)(x, LABELS, indices_tuple)
    b = pml_losses.NCALoss(softmax_scale=scale)(x, LABELS, indices_tuple)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(dtype, scale, indices_tuple):
    x, r = batch(dtype=dtype), reference(dtype=dtype)
    a = NCALoss(scale)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = pml_losses.NCALoss(softmax_scale=scale)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def test_the_embeddings_passed_as_their_own_reference_are_the_batch_as_in_pml():
    x = batch()  # the very tensor: its diagonal is left out, with or without a tuple
    for indices_tuple in (None, ALL_PAIRS_BUT_SELF, TUPLES[0]):
        a = NCALoss()(x, LABELS, indices_tuple, ref_emb=x, ref_labels=LABELS)
        b = pml_losses.NCALoss()(x, LABELS, indices_tuple, ref_emb=x, ref_labels=LABELS)
        assert_same_value_and_gradients(a, b, (x,))
        a = NCALoss()(x, LABELS, indices_tuple, ref_emb=x, ref_labels=LABELS)
        assert_same_value_and_gradients(a, NCALoss()(x, LABELS, indices_tuple), (x,))
    copy = x.detach().clone()  # another tensor holding the same rows is another set: (i, i) is a pair
    assert NCALoss()(x, LABELS, ref_emb=copy, ref_labels=LABELS).item() < NCALoss()(x, LABELS).item()


def test_tuple_weights_count_every_index_or_only_the_anchors():
    triplets = (torch.tensor([0, 0, 3]), torch.tensor([3, 8, 0]), torch.tensor([1, 1, 2]))
    # every index: 0 three times, 3 twice, 1 twice, 8 and 2 once
    expected = torch.tensor([3, 2, 1, 2, 0, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float64) / 3
    torch.testing.assert_close(anchor_weights(triplets, 12, False, torch.zeros(1, dtype=torch.float64)), expected)
    anchors = torch.tensor([2, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.float64) / 2
    torch.testing.assert_close(anchor_weights(triplets, 12, True, torch.zeros(1, dtype=torch.float64)), anchors)


def _paper_reference(x: list[list[float]], labels: list[int], scale: float) -> float:
    """Goldberger et al.'s p_i in float64 with loops on L2-normalised rows: -log p_i, p_i the softmax mass
    of i's same-label neighbours over exp(-s d²), averaged over the samples that have one."""
    unit = [[v / math.sqrt(sum(w * w for w in row)) for v in row] for row in x]

    def squared(u, v):
        return sum((a - b) ** 2 for a, b in zip(u, v))

    terms = []
    for i in range(len(labels)):
        others = [j for j in range(len(labels)) if j != i]
        if not any(labels[j] == labels[i] for j in others):
            continue
        mass = {j: math.exp(-scale * squared(unit[i], unit[j])) for j in others}
        p = sum(m for j, m in mass.items() if labels[j] == labels[i]) / sum(mass.values())
        terms.append(-math.log(p))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("scale", SCALES)
def test_equals_the_papers_formula(scale):
    x = batch()
    expected = _paper_reference(x.tolist(), LABELS.tolist(), scale)
    assert NCALoss(scale)(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # unit vectors at 0°, 90° (label 0) and 180° (label 1), lengths 1, 3, 0.5: d² 2 for 90° apart, 4 for 180°
    angles = torch.tensor([0.0, 90.0, 180.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # p_0 = e^-2 / (e^-2 + e^-4), p_1 = e^-2 / (e^-2 + e^-2) = 1/2; sample 2 has no same-writer neighbour
    expected = (math.log1p(math.exp(-2)) + math.log(2)) / 2
    assert NCALoss()(x, labels).item() == pytest.approx(expected, rel=1e-12)


def test_differs_from_pml_where_it_returns_nan_or_ignores_an_empty_tuple():
    x = batch()
    distinct = torch.arange(12)  # nobody has a same-writer partner: PML averages nothing (NaN), hvkit gives 0
    value = NCALoss()(x, distinct)
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()
    assert math.isnan(pml_losses.NCALoss()(x, distinct).item())
    empty = tuple(torch.tensor([], dtype=torch.long) for _ in range(3))  # a miner that found nothing
    assert NCALoss()(x, LABELS, empty).item() == 0.0
    assert pml_losses.NCALoss()(x, LABELS, empty).item() == pytest.approx(NCALoss()(x, LABELS).item())


def test_a_batch_of_one_writer_gives_zero():
    x = batch()
    value = NCALoss()(x, torch.zeros(12, dtype=torch.long))  # every neighbour is a same-writer one: p_i = 1
    value.backward()
    assert value.item() == pytest.approx(0.0, abs=1e-12) and x.grad.abs().max() < 1e-12  # to rounding, as PML


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: NCALoss(4.0)(x, LABELS, TUPLES[0]), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(NCALoss(16.0), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(NCALoss(8.0))
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(NCALoss, {})


@pytest.mark.parametrize("scale", [0.0, -1.0])
def test_invalid_settings_raise(scale):
    with pytest.raises(ValueError, match="^nca: softmax_scale"):
        NCALoss(scale)
