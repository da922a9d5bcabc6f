"""N-pair loss: value and gradient against PML NPairsLoss, Sohn's formula in float64, the pair choice, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses, regularizers

from hvkit.testing import check_loss
from hvkit_plugins.losses.npairs import NPairsLoss, first_pair_per_class

from .pair_batch import LABELS, TUPLES, batch

PAIRS_OF_LABELS = [(0, 3), (1, 5), (2, 7), (4, 11)]  # each writer's first two samples; writer 4 has one


def _pml(reg_lambda: float, normalize: bool) -> pml_losses.NPairsLoss:
    """PML's NPairsLoss in the matching setting: its default is ``reg_lambda=0, normalize=True``."""
    if reg_lambda == 0:
        return pml_losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=normalize))
    return pml_losses.NPairsLoss(distance=distances.DotProductSimilarity(normalize_embeddings=normalize),
                                 embedding_regularizer=regularizers.LpRegularizer(power=2),
                                 embedding_reg_weight=reg_lambda)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("reg_lambda", "normalize"), [(0.0, True), (0.002, False), (0.0, False), (0.05, True)])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, reg_lambda, normalize, indices_tuple):
    x = batch(dtype=dtype)
    ours, pml = NPairsLoss(reg_lambda, normalize), _pml(reg_lambda, normalize)
    a, b = ours(x, LABELS, indices_tuple), pml(x, LABELS, indices_tuple)
    assert a.item() > 0
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])


def test_pml_default_is_cosine_without_regulariser():
    x = batch()
    ours = NPairsLoss(0.0, normalize_embeddings=True)
    torch.testing.assert_close(ours(x, LABELS), pml_losses.NPairsLoss()(x, LABELS))


def _sohn_reference(x: torch.Tensor, pairs: list[tuple[int, int]], reg_lambda: float) -> float:
    """Sohn's Eq. 6 in float64, 1/N sum_i log(1 + sum_{j != i} exp(f_i.f_j+ - f_i.f_i+)), plus lambda mean ||f||^2."""
    dot = lambda i, j: sum(a * b for a, b in zip(x[i].tolist(), x[j].tolist()))  # noqa: E731
    total = 0.0
    for i, (anchor, positive) in enumerate(pairs):
        total += math.log(1 + sum(math.exp(dot(anchor, other) - dot(anchor, positive))
                                  for j, (_, other) in enumerate(pairs) if j != i))
    return total / len(pairs) + reg_lambda * sum(dot(b, b) for b in range(len(x))) / len(x)


@pytest.mark.parametrize("reg_lambda", [0.0, 0.002, 0.1])
def test_equals_sohns_formula(reg_lambda):
    x = batch()
    expected = _sohn_reference(x.detach(), PAIRS_OF_LABELS, reg_lambda)
    assert NPairsLoss(reg_lambda)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_case():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.0], [0.0, 3.0], [5.0, 5.0]])
    labels = torch.tensor([0, 1, 0, 1, 0])  # pairs (0, 2) and (1, 3); sample 4 is a third of writer 0
    # logits [[f0.f2, f0.f3], [f1.f2, f1.f3]] = [[2, 0], [0, 3]]; ||f||^2 = 1, 1, 4, 9, 50
    cross_entropy = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-3))) / 2
    assert NPairsLoss(0.0)(x, labels).item() == pytest.approx(cross_entropy)
    assert NPairsLoss(0.01)(x, labels).item() == pytest.approx(cross_entropy + 0.01 * 65 / 5)


def test_pairs_are_each_writers_first_two_samples():
    anchors, positives = first_pair_per_class(LABELS)
    assert sorted(zip(anchors.tolist(), positives.tolist())) == PAIRS_OF_LABELS
    shuffled = torch.tensor([3, 3, 1, 0, 1, 0, 3])
    anchors, positives = first_pair_per_class(shuffled)
    assert sorted(zip(anchors.tolist(), positives.tolist())) == [(0, 1), (2, 4), (3, 5)]


def test_samples_outside_the_pairs_get_only_the_regulariser_gradient():
    x = batch()
    outside = [6, 8, 9, 10]  # third samples of writers 1, 0, 2 and writer 4's only one
    assert torch.autograd.grad(NPairsLoss(0.0)(x, LABELS), x)[0][outside].abs().max().item() == 0.0
    grad = torch.autograd.grad(NPairsLoss(0.1)(x, LABELS), x)[0]
    torch.testing.assert_close(grad[outside], 2 * 0.1 * x.detach()[outside] / 12)


def test_the_mined_pair_replaces_the_first_two_samples():
    x = batch()
    mined = (torch.tensor([8, 6]), torch.tensor([0, 1]), torch.tensor([8]), torch.tensor([2]))
    expected = _sohn_reference(x.detach(), [(8, 0), (6, 1)], 0.0)
    assert NPairsLoss(0.0)(x, LABELS, mined).item() == pytest.approx(expected, rel=1e-12)


def test_no_pair_leaves_the_regulariser():
    x, labels = batch(), torch.arange(12)
    loss = NPairsLoss(0.1)(x, labels)
    assert loss.item() == pytest.approx(0.1 * x.detach().square().sum(1).mean().item(), rel=1e-12)
    assert NPairsLoss(0.0)(x, labels).item() == 0.0


@pytest.mark.parametrize(("reg_lambda", "normalize"), [(0.002, False), (0.0, True)])
def test_gradcheck(reg_lambda, normalize):
    x = batch()
    assert torch.autograd.gradcheck(lambda x: NPairsLoss(reg_lambda, normalize)(x, LABELS), (x,))


@pytest.mark.parametrize("params", [{}, {"reg_lambda": 0.0, "normalize_embeddings": True}])
def test_contract(params):
    check_loss(NPairsLoss, params)


def test_invalid_settings_raise():
    with pytest.raises(ValueError, match="reg_lambda"):
        NPairsLoss(reg_lambda=-0.1)


def test_a_malformed_indices_tuple_raises():
    with pytest.raises(ValueError, match="indices_tuple"):
        NPairsLoss()(batch(), LABELS, TUPLES[0][:2])
