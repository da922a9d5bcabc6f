"""Intra-pair variance loss: value and gradient against PML IntraPairVarianceLoss (with tuples and a reference set
too), Yu & Tao's formula in float64, a hand-computed case, where it deliberately differs from PML, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.intra_pair_variance import IntraPairVarianceLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

SETTINGS = [(0.01, 0.01), (0.3, 0.5)]  # PML's defaults; wide slacks that leave some pairs inside them


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("pos_eps", "neg_eps"), SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, pos_eps, neg_eps, indices_tuple):
    x = batch(dtype=dtype)
    a = IntraPairVarianceLoss(pos_eps, neg_eps)(x, LABELS, indices_tuple)
    b = pml_losses.IntraPairVarianceLoss(pos_eps=pos_eps, neg_eps=neg_eps)(x, LABELS, indices_tuple)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("pos_eps", "neg_eps"), SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(dtype, pos_eps, neg_eps, indices_tuple):
    x, r = batch(dtype=dtype), reference(dtype=dtype)
    a = IntraPairVarianceLoss(pos_eps, neg_eps)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = pml_losses.IntraPairVarianceLoss(pos_eps=pos_eps, neg_eps=neg_eps)(x, LABELS, indices_tuple, ref_emb=r,
                                                                          ref_labels=REF_LABELS)
    assert b.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def test_repeated_pairs_count_as_in_pml():
    x = batch()  # a triplet miner repeats (anchor, positive) and (anchor, negative) pairs
    triplets = (torch.tensor([0, 0, 0, 3, 3, 1]), torch.tensor([3, 3, 8, 0, 0, 5]), torch.tensor([1, 2, 1, 1, 1, 0]))
    a = IntraPairVarianceLoss(0.3, 0.5)(x, LABELS, triplets)
    b = pml_losses.IntraPairVarianceLoss(pos_eps=0.3, neg_eps=0.5)(x, LABELS, triplets)
    assert_same_value_and_gradients(a, b, (x,))


def test_the_gradient_flows_through_the_means():
    x = batch()  # as in PML: the same terms with detached means have another gradient
    loss = IntraPairVarianceLoss(0.3, 0.5)(x, LABELS)
    same = LABELS[:, None] == LABELS[None, :]

    def terms(detach: bool) -> torch.Tensor:
        unit = torch.nn.functional.normalize(x, dim=1)
        cos = unit @ unit.T
        pos, neg = cos[same & ~torch.eye(12, dtype=torch.bool)], cos[~same]
        pos_mean, neg_mean = (pos.mean().detach(), neg.mean().detach()) if detach else (pos.mean(), neg.mean())
        return torch.relu(0.7 * pos_mean - pos).square().mean() + torch.relu(neg - 1.5 * neg_mean).square().mean()

    assert_same_value_and_gradients(loss, terms(False), (x,))
    loss = IntraPairVarianceLoss(0.3, 0.5)(x, LABELS)
    assert not torch.allclose(torch.autograd.grad(loss, x)[0], torch.autograd.grad(terms(True), x)[0])


def _paper_reference(x: list[list[float]], pairs: tuple[list, list, list, list], pos_eps: float,
                     neg_eps: float) -> float:
    """Yu & Tao's intra-pair variance in float64 with loops: each kind's [(1-ε) E cos - cos]_+² or
    [cos - (1+ε) E cos]_+², averaged over its listed pairs (0 without any)."""
    def cosine(u, v):
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    a1, p, a2, n = pairs
    total = 0.0
    for anchors, partners, pulled, eps in ((a1, p, True, pos_eps), (a2, n, False, neg_eps)):
        cosines = [cosine(x[i], x[j]) for i, j in zip(anchors, partners)]
        if not cosines:
            continue
        mean = sum(cosines) / len(cosines)
        gaps = [(1 - eps) * mean - c if pulled else c - (1 + eps) * mean for c in cosines]
        total += sum(max(g, 0.0) ** 2 for g in gaps) / len(gaps)
    return total


def _all_pairs(labels: list[int]) -> tuple[list, list, list, list]:
    pos = [(i, j) for i in range(len(labels)) for j in range(len(labels)) if i != j and labels[i] == labels[j]]
    neg = [(i, j) for i in range(len(labels)) for j in range(len(labels)) if labels[i] != labels[j]]
    return [i for i, _ in pos], [j for _, j in pos], [i for i, _ in neg], [j for _, j in neg]


@pytest.mark.parametrize(("pos_eps", "neg_eps"), SETTINGS)
def test_equals_the_papers_formula(pos_eps, neg_eps):
    x = batch()
    expected = _paper_reference(x.tolist(), _all_pairs(LABELS.tolist()), pos_eps, neg_eps)
    assert IntraPairVarianceLoss(pos_eps, neg_eps)(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # unit vectors at 0°, 60°, 120° (label 0) and 180° (label 1); ε 0.1 both
    angles = torch.tensor([0.0, 60.0, 120.0, 180.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [2.0], [1.0], [0.5]],
                                                                          dtype=torch.float64)
    labels = torch.tensor([0, 0, 0, 1])
    # positive cosines 1/2 (0-60, 60-120, twice each) and -1/2 (0-120, twice): mean 1/6, 0.9 E = 0.15;
    # only the -1/2 pairs fall short: (0.15 + 0.5)² for 2 of 6 pairs
    pulled = 2 * 0.65 ** 2 / 6
    # negative cosines -1 (0-180), -1/2 (60-180), 1/2 (120-180), twice each: mean -1/3, 1.1 E = -11/30;
    # -1/2 + 11/30 < 0, 1/2 + 11/30 = 26/30: (26/30)² for 2 of 6 pairs
    pushed = 2 * (26 / 30) ** 2 / 6
    assert IntraPairVarianceLoss(0.1, 0.1)(x, labels).item() == pytest.approx(pulled + pushed, rel=1e-12)


def test_a_single_pair_of_each_kind_keeps_its_term_where_pml_returns_zero():
    x = batch()
    pairs = (torch.tensor([0]), torch.tensor([3]), torch.tensor([0]), torch.tensor([2]))
    expected = _paper_reference(x.tolist(), tuple(t.tolist() for t in pairs), 0.3, 0.5)
    assert expected > 0  # the single positive's cosine is negative: [-ε cos]_+² > 0
    assert IntraPairVarianceLoss(0.3, 0.5)(x, LABELS, pairs).item() == pytest.approx(expected, rel=1e-10)
    assert pml_losses.IntraPairVarianceLoss(pos_eps=0.3, neg_eps=0.5)(x, LABELS, pairs).item() == 0.0


@pytest.mark.parametrize("labels", [torch.zeros(12, dtype=torch.long), torch.arange(12)],
                         ids=["one writer", "one sample per writer"])
def test_a_batch_with_one_kind_of_pair_equals_pml(labels):
    x = batch()  # one writer: positives only; one sample per writer: negatives only
    a = IntraPairVarianceLoss(0.3, 0.5)(x, labels)
    b = pml_losses.IntraPairVarianceLoss(pos_eps=0.3, neg_eps=0.5)(x, labels)
    assert a.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


def test_no_pairs_give_zero():
    x = batch(n=1)
    value = IntraPairVarianceLoss()(x, torch.zeros(1, dtype=torch.long))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: IntraPairVarianceLoss(0.3, 0.5)(x, LABELS, TUPLES[1]), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(IntraPairVarianceLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(IntraPairVarianceLoss(0.3, 0.5))
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(IntraPairVarianceLoss, {})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pos_eps": -0.1}, "pos_eps"), ({"pos_eps": 1.0}, "pos_eps"), ({"neg_eps": -0.1}, "neg_eps")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^intra_pair_variance: {message}"):
        IntraPairVarianceLoss(**kwargs)
