"""Identitization: value against a float64 loop re-derivation, hand cases, gradcheck, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit_plugins.losses.identitization import IdentitizationLoss


def _logits(n: int, k: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 11 + k)
    a = torch.randn(n, k, generator=g, dtype=dtype)
    b = a + 0.7 * torch.randn(n, k, generator=g, dtype=dtype)
    return a.requires_grad_(), b.requires_grad_()


def _reference(a: torch.Tensor, b: torch.Tensor, tau: float, w: float) -> float:
    p_a = torch.softmax(a.detach().double() / tau, dim=1)
    p_b = torch.softmax(b.detach().double() / tau, dim=1)
    k = p_a.shape[1]
    total = 0.0
    for i in range(k):
        for j in range(k):
            norms = math.sqrt(float(p_a[:, i] @ p_a[:, i]) * float(p_b[:, j] @ p_b[:, j]))
            c = float(p_a[:, i] @ p_b[:, j]) / norms
            total += (1 - c) ** 2 if i == j else w * c ** 2
    return total


@pytest.mark.parametrize("tau,w", [(1.0, 1.0), (0.5, 0.2)])
@pytest.mark.parametrize("n,k", [(10, 3), (4, 6)])
def test_value_against_formula(tau, w, n, k):
    a, b = _logits(n, k)
    torch.testing.assert_close(IdentitizationLoss(tau, w)(a, b).item(), _reference(a, b, tau, w))


def test_confident_consistent_assignments_give_zero_and_a_permuted_view_does_not():
    one_hot = torch.eye(3, dtype=torch.float64).repeat(2, 1)  # 6 samples, every cluster used
    logits = 100.0 * one_hot
    loss = IdentitizationLoss()
    torch.testing.assert_close(loss(logits, logits).item(), 0.0)
    # the second view names the clusters differently: C is a permutation matrix, ||C - I||_F^2 = 2K
    torch.testing.assert_close(loss(logits, logits[:, [1, 2, 0]]).item(), 6.0)


def test_all_equal_logits_give_every_correlation_one():
    z = torch.zeros(5, 4, dtype=torch.float64, requires_grad=True)
    loss = IdentitizationLoss(off_diagonal_weight=0.5)(z, z)
    torch.testing.assert_close(loss.item(), 0.5 * 4 * 3)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_gradcheck():
    a, b = _logits(5, 3)
    assert torch.autograd.gradcheck(IdentitizationLoss(0.7, 0.3), (a, b))


def test_errors():
    with pytest.raises(ValueError, match="at least 2 clusters"):
        IdentitizationLoss()(torch.randn(4, 1), torch.randn(4, 1))
    with pytest.raises(ValueError, match="one shape"):
        IdentitizationLoss()(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        IdentitizationLoss(temperature=0.0)
    with pytest.raises(ValueError, match="off_diagonal_weight"):
        IdentitizationLoss(off_diagonal_weight=-0.1)
