"""VICReg: value and gradient against pytorch-metric-learning, the paper's convention, gradcheck, errors."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit_plugins.losses.vicreg import VICRegLoss, covariance_term, invariance_term, variance_term


def _views(n: int, d: int, dtype: torch.dtype, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = 0.5 * z_a + 0.6 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _reference(z_a, z_b, lam, mu, nu, eps, gamma, average_variance):
    """Float64 VICReg straight from the paper's definitions, with an explicit (D, D) covariance."""
    z_a, z_b = z_a.double(), z_b.double()

    def variance(z):
        return torch.relu(gamma - torch.sqrt(z.var(dim=0) + eps)).mean()

    def covariance(z):
        n, d = z.shape
        c = (z - z.mean(0)).T @ (z - z.mean(0)) / (n - 1)
        return sum(c[i, j] ** 2 for i in range(d) for j in range(d) if i != j) / d

    var = variance(z_a) + variance(z_b)
    return (lam * ((z_a - z_b) ** 2).mean() + mu * (var / 2 if average_variance else var)
            + nu * (covariance(z_a) + covariance(z_b)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,d", [(16, 6), (5, 12), (32, 32)])
def test_value_and_gradient_equal_pml(dtype, n, d):
    z_a, z_b = _views(n, d, dtype)
    ours = VICRegLoss()(z_a, z_b)
    pml = pml_losses.VICRegLoss()(z_a, ref_emb=z_b)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 1e-12}
    torch.testing.assert_close(ours, pml, **tol)
    for g_ours, g_pml in zip(torch.autograd.grad(ours, (z_a, z_b)), torch.autograd.grad(pml, (z_a, z_b))):
        torch.testing.assert_close(g_ours, g_pml, **tol)


def test_non_default_weights_equal_pml():
    z_a, z_b = _views(12, 7, torch.float64)
    ours = VICRegLoss(invariance_weight=3.0, variance_weight=7.0, covariance_weight=0.5, eps=1e-3)(z_a, z_b)
    pml = pml_losses.VICRegLoss(invariance_lambda=3.0, variance_mu=7.0, covariance_v=0.5, eps=1e-3)
    pml = pml(z_a, ref_emb=z_b)
    torch.testing.assert_close(ours, pml)


@pytest.mark.parametrize("average_variance", [True, False])
def test_gamma_and_variance_convention_against_formula(average_variance):
    z_a, z_b = _views(9, 5, torch.float64)
    z_a, z_b = 0.3 * z_a.detach(), 0.3 * z_b.detach()  # below the target std: the hinge is active
    loss = VICRegLoss(invariance_weight=2.0, variance_weight=3.0, covariance_weight=4.0, eps=1e-4,
                      gamma=1.5, average_variance=average_variance)
    expected = _reference(z_a, z_b, 2.0, 3.0, 4.0, 1e-4, 1.5, average_variance)
    torch.testing.assert_close(loss(z_a, z_b), expected)


def test_paper_sum_exceeds_average_by_half_the_variance_term():
    z_a, z_b = _views(10, 4, torch.float64)
    z_a, z_b = 0.2 * z_a.detach(), 0.2 * z_b.detach()
    gap = VICRegLoss(average_variance=False)(z_a, z_b) - VICRegLoss()(z_a, z_b)
    torch.testing.assert_close(gap, 25.0 * (variance_term(z_a) + variance_term(z_b)) / 2)


@pytest.mark.parametrize("n,d", [(4, 9), (9, 4)])
def test_covariance_term_both_gram_sides(n, d):
    z, _ = _views(n, d, torch.float64)
    c = torch.cov(z.detach().T)
    expected = (c.pow(2).sum() - c.diagonal().pow(2).sum()) / d
    torch.testing.assert_close(covariance_term(z), expected)
    assert torch.autograd.gradcheck(covariance_term, (z,))


def test_terms_on_a_hand_computed_case():
    z = torch.tensor([[1.0, 0.0], [-1.0, 2.0], [0.0, -2.0]], dtype=torch.float64)
    # columns have variance 1 and 4, covariance -1: c(Z) = 2 * 1 / 2
    torch.testing.assert_close(covariance_term(z), torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(variance_term(z, gamma=1.5, eps=0.0), torch.tensor(0.25, dtype=torch.float64))
    torch.testing.assert_close(invariance_term(z, torch.zeros_like(z)),
                               torch.tensor(10 / 6, dtype=torch.float64))


@pytest.mark.parametrize("average_variance", [True, False])
def test_logged_terms_are_the_unweighted_parts_of_the_value(average_variance):
    z_a, z_b = (0.4 * z.detach() for z in _views(10, 6, torch.float64))  # below gamma: every term non-zero
    loss = VICRegLoss(invariance_weight=2.0, variance_weight=3.0, covariance_weight=4.0, gamma=1.5,
                      average_variance=average_variance)
    value = loss(z_a, z_b)
    terms = loss.terms()
    assert set(terms) == {"invariance", "variance", "covariance"}
    torch.testing.assert_close(terms["invariance"], _reference(z_a, z_b, 1.0, 0.0, 0.0, 1e-4, 1.5, average_variance))
    torch.testing.assert_close(terms["variance"], _reference(z_a, z_b, 0.0, 1.0, 0.0, 1e-4, 1.5, average_variance))
    torch.testing.assert_close(terms["covariance"], _reference(z_a, z_b, 0.0, 0.0, 1.0, 1e-4, 1.5, average_variance))
    torch.testing.assert_close(value, 2 * terms["invariance"] + 3 * terms["variance"] + 4 * terms["covariance"])
    assert all(v > 0 for v in terms.values())


def test_gradcheck():
    z_a, z_b = _views(6, 5, torch.float64)
    assert torch.autograd.gradcheck(VICRegLoss(gamma=2.0), (z_a, z_b))


def test_symmetric_in_the_views():
    z_a, z_b = _views(8, 5, torch.float64)
    torch.testing.assert_close(VICRegLoss()(z_a, z_b), VICRegLoss()(z_b, z_a))


def test_all_equal_embeddings_give_a_finite_value_and_gradient():
    z_a = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    z_b = torch.ones(6, 4, dtype=torch.float64, requires_grad=True)
    loss = VICRegLoss()(z_a, z_b)
    torch.testing.assert_close(loss, torch.tensor(25.0 * (1 - 1e-2), dtype=torch.float64))
    loss.backward()
    assert torch.isfinite(z_a.grad).all() and torch.isfinite(z_b.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        VICRegLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        VICRegLoss()(torch.randn(4, 4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="covariance_weight"):
        VICRegLoss(covariance_weight=-1.0)
    with pytest.raises(ValueError, match="eps"):
        VICRegLoss(eps=0.0)
    with pytest.raises(ValueError, match="gamma"):
        VICRegLoss(gamma=0.0)


def test_runs_in_float32_under_autocast():
    z_a, z_b = _views(64, 256, torch.float32)
    expected = VICRegLoss()(z_a, z_b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(VICRegLoss()(z_a, z_b), expected)
