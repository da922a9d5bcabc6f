"""Barlow Twins: value against a float64 re-derivation of the official code, both matmul paths, gradcheck."""

from __future__ import annotations

import pytest
import torch

from hvkit_plugins.losses.barlow_twins import BarlowTwinsLoss, cross_correlation_terms, standardize


def _views(n: int, d: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 100 + d)
    z_a = 2.0 + 3.0 * torch.randn(n, d, generator=g, dtype=dtype)
    z_b = 0.8 * z_a + torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _reference(z_a: torch.Tensor, z_b: torch.Tensor, lam: float, eps: float = 1e-5) -> torch.Tensor:
    """The official recipe in float64: BatchNorm1d(affine=False) in training mode, C = bn(a)^T bn(b) / N."""
    bn = torch.nn.BatchNorm1d(z_a.shape[1], affine=False, eps=eps).double().train()
    c = bn(z_a.double()).T @ bn(z_b.double()) / z_a.shape[0]
    d = c.shape[0]
    on = sum((1 - c[i, i]) ** 2 for i in range(d))
    off = sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j)
    return on + lam * off


@pytest.mark.parametrize("n,d", [(16, 5), (4, 12)])  # (D, D) path and (B, B) Gram path
@pytest.mark.parametrize("lam", [5e-3, 0.7])
def test_value_against_official_recipe(n, d, lam):
    z_a, z_b = _views(n, d)
    torch.testing.assert_close(BarlowTwinsLoss(off_diagonal_weight=lam)(z_a, z_b), _reference(z_a, z_b, lam))


def test_logged_terms_are_the_official_sums():
    z_a, z_b = _views(16, 5)
    loss = BarlowTwinsLoss(off_diagonal_weight=0.3)
    value = loss(z_a, z_b)
    terms = loss.terms()
    torch.testing.assert_close(terms["on_diagonal"], _reference(z_a, z_b, 0.0))
    torch.testing.assert_close(terms["off_diagonal"], (_reference(z_a, z_b, 1.0) - _reference(z_a, z_b, 0.0)))
    torch.testing.assert_close(value, terms["on_diagonal"] + 0.3 * terms["off_diagonal"])
    assert not any(v.requires_grad for v in terms.values())


def test_float32_close_to_float64():
    z_a, z_b = _views(32, 80, torch.float32)
    expected = _reference(z_a, z_b, 5e-3).float()
    torch.testing.assert_close(BarlowTwinsLoss()(z_a, z_b), expected, rtol=1e-4, atol=1e-4)


def test_standardize_matches_batchnorm():
    z, _ = _views(7, 3)
    bn = torch.nn.BatchNorm1d(3, affine=False).double().train()
    torch.testing.assert_close(standardize(z), bn(z))


def test_identical_decorrelated_views_give_zero():
    # Orthogonal +-1 columns (a Hadamard matrix) are already standardised and decorrelated: C = I.
    h = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float64)
    z = h[:, 1:]
    on, off = cross_correlation_terms(z, z)
    torch.testing.assert_close(on, torch.tensor(0.0, dtype=torch.float64))
    torch.testing.assert_close(off, torch.tensor(0.0, dtype=torch.float64))


@pytest.mark.parametrize("n,d", [(6, 4), (3, 8)])
def test_gradcheck(n, d):
    z_a, z_b = _views(n, d)
    assert torch.autograd.gradcheck(BarlowTwinsLoss(off_diagonal_weight=0.3), (z_a, z_b))


def test_all_equal_embeddings_give_a_finite_value():
    z = torch.ones(5, 3, dtype=torch.float64, requires_grad=True)
    loss = BarlowTwinsLoss()(z, z)
    # standardised constant features are 0, so C = 0 and each diagonal term is (1 - 0)^2
    torch.testing.assert_close(loss, torch.tensor(3.0, dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        BarlowTwinsLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        BarlowTwinsLoss()(torch.randn(4, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="off_diagonal_weight"):
        BarlowTwinsLoss(off_diagonal_weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        BarlowTwinsLoss(eps=0.0)


def test_runs_in_float32_under_autocast():
    z_a, z_b = _views(16, 64, torch.float32)
    expected = BarlowTwinsLoss()(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(BarlowTwinsLoss()(z_a, z_b), expected)
