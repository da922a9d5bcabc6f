"""Angular loss: value and gradient against PML AngularLoss on L2-normalised inputs (with tuples and a reference set
too), the paper's formula in float64 where PML differs, a hand-computed case, edges."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.angular import AngularLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

ALPHAS = [40.0, 52.0]  # PML's default; the top of the paper's good range


def _unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml_on_unit_embeddings(dtype, alpha, indices_tuple):
    x = batch(dtype=dtype)  # PML takes its negatives unnormalised: the two agree on unit vectors
    a = AngularLoss(alpha)(_unit(x), LABELS, indices_tuple)
    b = pml_losses.AngularLoss(alpha=alpha)(_unit(x), LABELS, indices_tuple)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(indices_tuple):
    x, r = batch(), reference()
    a = AngularLoss()(_unit(x), LABELS, indices_tuple, ref_emb=_unit(r), ref_labels=REF_LABELS)
    b = pml_losses.AngularLoss()(_unit(x), LABELS, indices_tuple, ref_emb=_unit(r), ref_labels=REF_LABELS)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def test_mined_triplets_give_their_positive_pairs_repeats_counted_and_every_negative():
    x = batch()
    triplets = (torch.tensor([0, 0, 0, 3, 1]), torch.tensor([3, 3, 8, 0, 5]), torch.tensor([1, 2, 1, 1, 0]))
    other_negatives = (triplets[0], triplets[1], torch.tensor([9, 9, 9, 4, 2]))
    a = AngularLoss()(_unit(x), LABELS, triplets)
    assert_same_value_and_gradients(a, pml_losses.AngularLoss()(_unit(x), LABELS, triplets), (x,))
    torch.testing.assert_close(AngularLoss()(x, LABELS, other_negatives), AngularLoss()(x, LABELS, triplets))


def test_a_pair_tuple_without_negative_pairs_gives_zero_as_in_pml():
    x = batch()
    empty = torch.tensor([], dtype=torch.long)
    pairs = (torch.tensor([0, 3]), torch.tensor([3, 8]), empty, empty)
    value = AngularLoss()(x, LABELS, pairs)
    value.backward()
    assert value.item() == 0.0 == pml_losses.AngularLoss()(x, LABELS, pairs) and torch.isfinite(x.grad).all()


def _paper_reference(x: list[list[float]], labels: list[int], alpha: float) -> float:
    """Wang et al.'s smooth N-pair form in float64 with loops, every vector normalised: log(1 + sum_n exp f_apn) per
    positive pair (a, p), f_apn = 4 tan^2 α (x_a + x_p).x_n - 2 (1 + tan^2 α) x_a.x_p, averaged over the pairs."""
    unit = [[c / math.sqrt(sum(v * v for v in row)) for c in row] for row in x]
    dot = lambda u, v: sum(a * b for a, b in zip(u, v))  # noqa: E731
    t = math.tan(math.radians(alpha)) ** 2
    terms = []
    for a in range(len(labels)):
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            centre_sum = [u + v for u, v in zip(unit[a], unit[p])]
            total = sum(math.exp(4 * t * dot(centre_sum, unit[n]) - 2 * (1 + t) * dot(unit[a], unit[p]))
                        for n in range(len(labels)) if labels[n] != labels[a])
            terms.append(math.log1p(total))
    return sum(terms) / len(terms)


@pytest.mark.parametrize("alpha", ALPHAS)
def test_equals_the_papers_formula_where_pml_does_not(alpha):
    x = batch()  # raw: PML's unnormalised negatives give another value
    expected = _paper_reference(x.tolist(), LABELS.tolist(), alpha)
    assert AngularLoss(alpha)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)
    assert pml_losses.AngularLoss(alpha=alpha)(x, LABELS).item() != pytest.approx(expected, rel=1e-3)


def test_a_negatives_norm_changes_pmls_loss_but_not_the_papers():
    x = batch().detach()
    grown = x.clone()
    grown[9] *= 10  # sample 9 is a negative of every anchor (its writer is alone in the batch)
    assert AngularLoss()(grown, LABELS).item() == pytest.approx(AngularLoss()(x, LABELS).item(), rel=1e-12)
    pml = pml_losses.AngularLoss()
    assert abs(pml(grown, LABELS).item() - pml(x, LABELS).item()) > 1


def test_f_is_the_papers_hinge_up_to_a_constant():
    x = _unit(batch().detach())
    t = math.tan(math.radians(40.0)) ** 2
    a, p, n = x[0], x[3], x[1]
    hinge = (a - p).square().sum() - 4 * t * (n - (a + p) / 2).square().sum()
    f = 4 * t * (a + p) @ n - 2 * (1 + t) * a @ p
    assert (hinge - f).item() == pytest.approx(2 - 6 * t, rel=1e-12)


def test_hand_computed_case():
    # label 0 at 0° and 60°, label 1 at 180° and 90°, of assorted norms; α = 45°: tan^2 = 1, f = 4 (a + p).n - 4 a.p
    angles = torch.tensor([0.0, 60.0, 180.0, 90.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5], [2.0]],
                                                                        dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1])
    h = math.sqrt(3) / 2
    # (0, 1), (1, 0): a + p = (3/2, h), a.p = 1/2 -> f = -8 at 180°, 4 h - 2 at 90°
    # (2, 3), (3, 2): a + p = (-1, 1), a.p = 0 -> f = -4 at 0°, 4 (h - 1/2) at 60°
    expected = (math.log1p(math.exp(-8) + math.exp(4 * h - 2))
                + math.log1p(math.exp(-4) + math.exp(4 * (h - 0.5)))) / 2
    assert AngularLoss(45.0)(x, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("labels", [[0] * 12, list(range(12))])
def test_a_batch_of_one_writer_or_of_singletons_gives_zero(labels):
    x = batch()  # no negatives, or no positive pairs
    value = AngularLoss()(x, torch.tensor(labels))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: AngularLoss()(x, LABELS), (x,))
    assert torch.autograd.gradcheck(lambda x: AngularLoss()(x, LABELS, TUPLES[1]), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(AngularLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(AngularLoss())
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(AngularLoss, {})


@pytest.mark.parametrize("alpha", [0.0, 90.0, -10.0])
def test_invalid_settings_raise(alpha):
    with pytest.raises(ValueError, match="^angular: alpha"):
        AngularLoss(alpha)
