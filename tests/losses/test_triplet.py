"""Triplet loss: value and gradient against PML TripletMarginLoss (with a reference set too), hand-computed case,
gradcheck, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses, reducers

from hvkit.testing import check_loss
from hvkit_plugins.losses.triplet import TripletLoss

from .pair_batch import LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_same_value_and_gradients, batch, reference


def _pml(margin: float, soft_margin: bool, normalize: bool, reduction: str) -> pml_losses.TripletMarginLoss:
    reducer = reducers.AvgNonZeroReducer() if reduction == "nonzero_mean" else reducers.MeanReducer()
    return pml_losses.TripletMarginLoss(margin=margin, smooth_loss=soft_margin, triplets_per_anchor="all",
                                        distance=distances.LpDistance(normalize_embeddings=normalize),
                                        reducer=reducer)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["nonzero_mean", "mean"])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, soft_margin, normalize, reduction, indices_tuple):
    x = batch(dtype=dtype)
    margin = 0.2 if normalize else 1.0
    ours = TripletLoss(margin, soft_margin, normalize, reduction)(x, LABELS, indices_tuple)
    pml = _pml(margin, soft_margin, normalize, reduction)(x, LABELS, indices_tuple)
    torch.testing.assert_close(ours, pml)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(pml, x)[0])


@pytest.mark.parametrize("soft_margin", [False, True])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["nonzero_mean", "mean"])
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(soft_margin, normalize, reduction, indices_tuple):
    x, r = batch(), reference()
    margin = 0.2 if normalize else 1.0
    ours = TripletLoss(margin, soft_margin, normalize, reduction)(x, LABELS, indices_tuple, ref_emb=r,
                                                                  ref_labels=REF_LABELS)
    pml = _pml(margin, soft_margin, normalize, reduction)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert ours.item() > 0
    assert_same_value_and_gradients(ours, pml, (x, r))


def test_a_pair_given_twice_gives_its_triplets_twice_like_pml():
    x = batch()
    twice = (torch.tensor([0, 3, 5, 0]), torch.tensor([3, 8, 6, 3]), torch.tensor([0, 0, 1, 2, 0]),
             torch.tensor([1, 2, 0, 11, 1]))  # positive (0, 3) and negative (0, 1) twice: anchor 0 has 2 x 3 triplets
    ours = TripletLoss(1.0, reduction="mean")(x, LABELS, twice)
    torch.testing.assert_close(ours, _pml(1.0, False, True, "mean")(x, LABELS, twice))
    assert ours.item() != pytest.approx(TripletLoss(1.0, reduction="mean")(x, LABELS, TUPLES[1]).item())


def test_hand_computed_case():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    # anchor 0: D_ap = 1, D_an = 2 -> 0.2 + 1 - 2 < 0; anchor 1: D_ap = 1, D_an = sqrt(5) -> < 0
    assert TripletLoss(normalize_embeddings=False)(x, labels).item() == 0.0
    # margin 1.5: 0.5 and 2.5 - sqrt(5); both positive
    expected = (0.5 + 2.5 - math.sqrt(5)) / 2
    assert TripletLoss(1.5, normalize_embeddings=False)(x, labels).item() == pytest.approx(expected)
    soft = (math.log1p(math.exp(-1.0)) + math.log1p(math.exp(1 - math.sqrt(5)))) / 2
    assert TripletLoss(0.0, soft_margin=True, normalize_embeddings=False)(x, labels).item() == pytest.approx(soft)


@pytest.mark.parametrize("soft_margin", [False, True])
def test_gradcheck(soft_margin):
    x = batch()
    assert torch.autograd.gradcheck(lambda x: TripletLoss(soft_margin=soft_margin)(x, LABELS), (x,))


@pytest.mark.parametrize("labels", [[1] * 12, list(range(12))])
def test_batches_without_triplets_give_zero(labels):
    x = batch()
    loss = TripletLoss()(x, torch.tensor(labels))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("soft_margin", [False, True])
def test_all_equal_embeddings_give_a_finite_value_and_gradient(soft_margin):
    x = torch.ones(12, 6, requires_grad=True)
    loss = TripletLoss(soft_margin=soft_margin)(x, LABELS)
    loss.backward()
    expected = math.log1p(math.exp(0.2)) if soft_margin else 0.2
    assert loss.item() == pytest.approx(expected) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("params", [{}, {"soft_margin": True, "normalize_embeddings": False}])
def test_conforms_on_edge_batches(params):
    check_loss(TripletLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [({"margin": -0.1}, "margin"), ({"reduction": "sum"}, "reduction")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TripletLoss(**kwargs)
