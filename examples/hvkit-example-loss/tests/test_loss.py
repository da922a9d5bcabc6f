"""Tests of the example contrastive loss: the formula, its gradient, and hvkit's conformance kit."""

import itertools

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_example_loss import ContrastiveLoss


def reference(x: torch.Tensor, labels: list[int], margin: float) -> float:
    """The formula of the docstring, pair by pair, in float64."""
    terms = []
    for i, j in itertools.permutations(range(len(labels)), 2):
        d = float(torch.linalg.vector_norm(x[i] - x[j]))
        terms.append(0.5 * d**2 if labels[i] == labels[j] else 0.5 * max(0.0, margin - d) ** 2)
    return sum(terms) / len(terms)


def test_matches_the_formula():
    x = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    labels = [0, 0, 1, 1, 1, 2, 0]
    value = ContrastiveLoss(margin=1.5)(x, torch.tensor(labels))
    assert value.item() == pytest.approx(reference(x, labels, 1.5), rel=1e-12)


def test_hand_computed_pair():
    x = torch.tensor([[0.0, 0.0], [0.6, 0.8], [0.0, 0.5]])
    # pairs (0,1) and (1,0): positive at distance 1; (0,2), (2,0): negative at 0.5 < margin 1;
    # (1,2), (2,1): negative at 0.67 (sqrt(0.45)) < 1
    expected = (2 * 0.5 * 1.0 + 2 * 0.5 * 0.5**2 + 2 * 0.5 * (1 - 0.45**0.5) ** 2) / 6
    assert ContrastiveLoss()(x, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, rel=1e-6)


def test_gradient():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True,
                    generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert torch.autograd.gradcheck(lambda e: ContrastiveLoss(margin=3.0)(e, labels), (x,))


def test_a_miners_triplets_mean_their_pairs():
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 0, 1, 1, 0])
    anchor, positive, negative = torch.tensor([0, 1]), torch.tensor([4, 0]), torch.tensor([2, 3])
    loss = ContrastiveLoss()
    assert torch.equal(loss(x, labels, (anchor, positive, negative)),
                       loss(x, labels, (anchor, positive, anchor, negative)))


def test_invalid_margin_is_a_clear_error():
    with pytest.raises(ValueError, match="margin must be positive"):
        ContrastiveLoss(margin=0.0)


def test_keeps_the_hvkit_loss_contract():
    check_loss(ContrastiveLoss)
    check_loss(ContrastiveLoss, {"margin": 0.2})
