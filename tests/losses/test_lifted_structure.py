"""Lifted structured loss and its generalised form: against PML, the papers' formulas in float64, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.lifted_structure import GeneralizedLiftedStructureLoss, LiftedStructureLoss

from .pair_batch import LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_same_value_and_gradients, batch, reference

# A miner's pairs with one negative pair mined twice (it counts twice in the paper form's sum, as in PML's gather)
REPEATED = (torch.tensor([0, 1, 3]), torch.tensor([3, 6, 0]), torch.tensor([0, 0, 3, 5]), torch.tensor([1, 1, 2, 0]))
PAIRS = {"lifted_structure": (LiftedStructureLoss, pml_losses.LiftedStructureLoss),
         "generalized_lifted_structure": (GeneralizedLiftedStructureLoss, pml_losses.GeneralizedLiftedStructureLoss)}


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES, REPEATED])
def test_value_and_gradient_equal_pml(name, dtype, normalize, indices_tuple):
    x = batch(dtype=dtype)
    neg_margin, pos_margin = (1.2, 0.1) if normalize else (3.0, 0.5)
    ours_class, pml_class = PAIRS[name]
    ours = ours_class(neg_margin, pos_margin, normalize_embeddings=normalize)
    pml = pml_class(neg_margin, pos_margin, distance=distances.LpDistance(normalize_embeddings=normalize))
    a, b = ours(x, LABELS, indices_tuple), pml(x, LABELS, indices_tuple)
    assert a.item() > 0
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(torch.autograd.grad(a, x)[0], torch.autograd.grad(b, x)[0])


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_generalized_reference_set_value_and_gradient_equal_pml(normalize, indices_tuple):
    """Only the generalised form takes a reference: the paper form's J_ij needs the negatives of both i and j."""
    x, r = batch(), reference()
    neg_margin, pos_margin = (1.2, 0.1) if normalize else (3.0, 0.5)
    ours = GeneralizedLiftedStructureLoss(neg_margin, pos_margin, normalize_embeddings=normalize)
    pml = pml_losses.GeneralizedLiftedStructureLoss(neg_margin, pos_margin,
                                                    distance=distances.LpDistance(normalize_embeddings=normalize))
    a = ours(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = pml(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert a.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def _distance(x: torch.Tensor, i: int, j: int) -> float:
    return math.dist(x[i].tolist(), x[j].tolist())


def _oh_song_reference(x: torch.Tensor, labels: list[int], alpha: float) -> float:
    """Oh Song et al.'s Eq. 4 in float64: the squared hinge of J_ij over the unordered positive pairs, / 2|P|."""
    n = len(labels)
    total, pairs = 0.0, 0
    for i in range(n):
        for j in range(i + 1, n):
            if labels[i] != labels[j]:
                continue
            negatives = sum(math.exp(alpha - _distance(x, i, k)) for k in range(n) if labels[k] != labels[i])
            negatives += sum(math.exp(alpha - _distance(x, j, k)) for k in range(n) if labels[k] != labels[j])
            total += max(0.0, math.log(negatives) + _distance(x, i, j)) ** 2
            pairs += 1
    return total / (2 * pairs)


def _hermans_reference(x: torch.Tensor, labels: list[int], margin: float) -> float:
    """Hermans et al.'s generalised lifted structure, averaged over the anchors, in float64."""
    n, total = len(labels), 0.0
    for a in range(n):
        positives = [math.exp(_distance(x, a, p)) for p in range(n) if p != a and labels[p] == labels[a]]
        negatives = [math.exp(margin - _distance(x, a, k)) for k in range(n) if labels[k] != labels[a]]
        total += max(0.0, sum(math.log(sum(terms)) for terms in (positives, negatives) if terms))
    return total / n


@pytest.mark.parametrize("scale", [0.3, 1.0])  # small embeddings: every J_ij positive; unit: some hinges at 0
def test_paper_form_is_oh_songs(scale):
    x = (batch() * scale).detach().requires_grad_()
    expected = _oh_song_reference(x.detach(), LABELS.tolist(), 1.0)
    assert LiftedStructureLoss(1.0, normalize_embeddings=False)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_generalized_form_is_hermans():
    x = batch()
    expected = _hermans_reference(x.detach(), LABELS.tolist(), 2.0)
    loss = GeneralizedLiftedStructureLoss(2.0, normalize_embeddings=False)(x, LABELS)
    assert loss.item() == pytest.approx(expected, rel=1e-12)


TINY_X, TINY_LABELS = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 0, 1])
# one positive pair (0, 1) at D = 1; negatives D_02 = 2, D_12 = sqrt 5


def test_hand_computed_paper_form():
    j = math.log(math.exp(1 - 2) + math.exp(1 - math.sqrt(5))) + 1
    assert LiftedStructureLoss(normalize_embeddings=False)(TINY_X, TINY_LABELS).item() == pytest.approx(j * j / 2)
    # pos_margin 0.5 moves J by -0.5
    assert LiftedStructureLoss(1.0, 0.5, normalize_embeddings=False)(TINY_X, TINY_LABELS).item() == \
        pytest.approx((j - 0.5) ** 2 / 2)


def test_hand_computed_generalized_form():
    # anchor 0: log e^1 + log e^(3-2); anchor 1: 1 + (3 - sqrt 5); anchor 2 (no positive): log(e^1 + e^(3-sqrt 5))
    expected = (2 + 4 - math.sqrt(5) + math.log(math.e + math.exp(3 - math.sqrt(5)))) / 3
    assert GeneralizedLiftedStructureLoss(3.0, normalize_embeddings=False)(TINY_X, TINY_LABELS).item() == \
        pytest.approx(expected)
    assert GeneralizedLiftedStructureLoss(normalize_embeddings=False)(TINY_X, TINY_LABELS).item() == 0.0


def test_mined_positive_pair_without_negatives_keeps_its_pull_term():
    # the negatives are anchored at 2 only: pair (0, 1) and (1, 0) have none, J = D_01 - 0 = 1, loss 1/2 (as PML)
    mined = (torch.tensor([0, 1]), torch.tensor([1, 0]), torch.tensor([2, 2]), torch.tensor([0, 1]))
    ours = LiftedStructureLoss(normalize_embeddings=False)(TINY_X, TINY_LABELS, mined)
    pml = pml_losses.LiftedStructureLoss(distance=distances.LpDistance(normalize_embeddings=False))
    assert ours.item() == pytest.approx(0.5)
    assert pml(TINY_X, TINY_LABELS, mined).item() == pytest.approx(0.5)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_invariant_to_the_order_of_the_batch(name):
    x, order = batch(), torch.randperm(12, generator=torch.Generator().manual_seed(3))
    loss = PAIRS[name][0](normalize_embeddings=False)
    assert loss(x[order], LABELS[order]).item() == pytest.approx(loss(x, LABELS).item(), rel=1e-12)


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("labels", [[1] * 12, list(range(12))])
def test_one_writer_or_no_pairs_equals_pml(name, labels):
    x, labels = batch(), torch.tensor(labels)
    ours_class, pml_class = PAIRS[name]
    a, b = ours_class()(x, labels), pml_class()(x, labels)
    torch.testing.assert_close(a, b.to(a.dtype))  # 0, except generalized with all singletons (negatives only)
    assert torch.isfinite(torch.autograd.grad(a, x)[0]).all()


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize("indices_tuple", [None, TUPLES[1]])
def test_gradcheck(name, indices_tuple):
    x = batch()
    loss = PAIRS[name][0](1.5, 0.1)
    assert torch.autograd.gradcheck(lambda x: loss(x, LABELS, indices_tuple), (x,))


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_contract(name):
    check_loss(PAIRS[name][0], {})


@pytest.mark.parametrize("name", sorted(PAIRS))
@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pos_margin": -0.1}, "pos_margin"), ({"neg_margin": 0.5, "pos_margin": 0.5}, "neg_margin")])
def test_invalid_settings_raise(name, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PAIRS[name][0](**kwargs)


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_a_malformed_indices_tuple_raises(name):
    with pytest.raises(ValueError, match="indices_tuple"):
        PAIRS[name][0]()(batch(), LABELS, TUPLES[0][:2])
