"""Contrastive loss: value and gradient against PML ContrastiveLoss (with a reference set too), Hadsell's squared
form in float64, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses, reducers

from hvkit.testing import check_loss
from hvkit_plugins.losses.contrastive import ContrastiveLoss

from .pair_batch import LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_same_value_and_gradients, batch, reference


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["nonzero_mean", "mean"])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, normalize, reduction, indices_tuple):
    x = batch(dtype=dtype)
    pos_margin, neg_margin = (0.3, 1.1) if normalize else (2.0, 4.0)  # margins that leave both kinds of terms
    ours = ContrastiveLoss(pos_margin, neg_margin, normalize_embeddings=normalize, reduction=reduction)
    reducer = reducers.AvgNonZeroReducer() if reduction == "nonzero_mean" else reducers.MeanReducer()
    pml = pml_losses.ContrastiveLoss(pos_margin, neg_margin, reducer=reducer,
                                     distance=distances.LpDistance(normalize_embeddings=normalize))
    a, b = ours(x, LABELS, indices_tuple), pml(x, LABELS, indices_tuple)
    assert a.item() > 0
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["nonzero_mean", "mean"])
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(normalize, reduction, indices_tuple):
    x, r = batch(), reference()
    pos_margin, neg_margin = (0.3, 1.1) if normalize else (2.0, 4.0)
    ours = ContrastiveLoss(pos_margin, neg_margin, normalize_embeddings=normalize, reduction=reduction)
    reducer = reducers.AvgNonZeroReducer() if reduction == "nonzero_mean" else reducers.MeanReducer()
    pml = pml_losses.ContrastiveLoss(pos_margin, neg_margin, reducer=reducer,
                                     distance=distances.LpDistance(normalize_embeddings=normalize))
    a = ours(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = pml(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert a.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def _hadsell_reference(x: torch.Tensor, labels: torch.Tensor, neg_margin: float) -> float:
    """Hadsell et al.'s Eq. 4 in float64, every ordered pair, each half averaged over its non-zero terms."""
    pulled, pushed = [], []
    for i in range(len(labels)):
        for j in range(len(labels)):
            if i == j:
                continue
            d = math.dist(x[i].tolist(), x[j].tolist())
            if labels[i] == labels[j]:
                pulled.append(d * d / 2)
            else:
                pushed.append(max(0.0, neg_margin - d) ** 2 / 2)
    mean = lambda terms: sum(terms) / max(1, sum(t > 0 for t in terms))  # noqa: E731
    return mean(pulled) + mean(pushed)


def test_squared_form_is_hadsells():
    x = batch()
    expected = _hadsell_reference(x.detach(), LABELS, 3.0)
    assert ContrastiveLoss(0.0, 3.0, squared=True, normalize_embeddings=False)(x, LABELS).item() == \
        pytest.approx(expected, rel=1e-12)


def test_hand_computed_case():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    labels = torch.tensor([0, 0, 1])
    # positive pairs (0,1),(1,0): D = 1; negatives (0,2),(2,0): D = 2, (1,2),(2,1): D = sqrt 5
    loss = ContrastiveLoss(0.5, 2.5, normalize_embeddings=False)
    assert loss(x, labels).item() == pytest.approx(0.5 + (0.5 + 2.5 - math.sqrt(5)) / 2)
    assert ContrastiveLoss(0.5, 2.5, normalize_embeddings=False, reduction="mean")(x, labels).item() == \
        pytest.approx(0.5 + (0.5 + 2.5 - math.sqrt(5)) / 2)
    assert ContrastiveLoss(1.0, 2.0, normalize_embeddings=False)(x, labels).item() == 0.0


@pytest.mark.parametrize("squared", [False, True])
def test_gradcheck(squared):
    x = batch()
    assert torch.autograd.gradcheck(lambda x: ContrastiveLoss(0.2, 1.2, squared=squared)(x, LABELS), (x,))


@pytest.mark.parametrize("labels", [[1] * 12, list(range(12))])
def test_a_batch_with_one_kind_of_pair_has_only_that_term(labels):
    x = batch()
    normalized = torch.nn.functional.normalize(x.detach(), dim=1)
    off_diagonal = torch.cdist(normalized, normalized)[~torch.eye(12, dtype=torch.bool)]
    loss = ContrastiveLoss(0.0, 5.0)(x, torch.tensor(labels))  # every pair is within 2 < 5
    expected = off_diagonal.mean() if len(set(labels)) == 1 else (5 - off_diagonal).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)


@pytest.mark.parametrize("params", [{}, {"squared": True}])
def test_contract(params):
    check_loss(ContrastiveLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pos_margin": -0.1}, "pos_margin"), ({"pos_margin": 1.0, "neg_margin": 1.0}, "neg_margin"),
    ({"reduction": "sum"}, "reduction")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ContrastiveLoss(**kwargs)
