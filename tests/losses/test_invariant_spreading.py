"""Invariant spreading: value against the paper's formula (float64 loops), gradcheck, edge cases, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit_plugins.losses.invariant_spreading import InvariantSpreadingLoss


def _views(n: int, d: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n * 7 + d)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = z_a + 0.5 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _paper(z_a: torch.Tensor, z_b: torch.Tensor, tau: float) -> float:
    """Ye et al. 2019, Eqs. 2, 3 and 5, divided by the batch size."""
    f = torch.nn.functional.normalize(z_a.detach().double(), dim=1)
    f_hat = torch.nn.functional.normalize(z_b.detach().double(), dim=1)
    m = f.shape[0]

    def p(i: int, x: torch.Tensor) -> float:  # P(i | sample with feature x)
        return math.exp(f[i] @ x / tau) / sum(math.exp(f[k] @ x / tau) for k in range(m))

    j_total = -sum(math.log(p(i, f_hat[i])) for i in range(m))
    j_total -= sum(math.log(1 - p(i, f[j])) for i in range(m) for j in range(m) if j != i)
    return j_total / m


@pytest.mark.parametrize("tau", [0.1, 0.5])
@pytest.mark.parametrize("n,d", [(5, 3), (8, 16)])
def test_value_against_paper_formula(tau, n, d):
    z_a, z_b = _views(n, d)
    torch.testing.assert_close(InvariantSpreadingLoss(tau)(z_a, z_b).item(), _paper(z_a, z_b, tau))


def test_float32_close_to_float64():
    z_a, z_b = _views(32, 8, torch.float32)
    value = InvariantSpreadingLoss()(z_a, z_b).item()
    torch.testing.assert_close(value, _paper(z_a, z_b, 0.1), rtol=1e-5, atol=1e-5)


def test_default_temperature_is_the_papers():
    assert InvariantSpreadingLoss().temperature == 0.1


def test_gradcheck():
    z_a, z_b = _views(4, 3)
    assert torch.autograd.gradcheck(InvariantSpreadingLoss(0.5), (z_a, z_b))


def test_batch_of_one_is_zero():
    z_a, z_b = _views(1, 4)
    torch.testing.assert_close(InvariantSpreadingLoss()(z_a, z_b).item(), 0.0)


def test_all_equal_embeddings_give_a_finite_value_and_gradient():
    z = torch.ones(4, 3, dtype=torch.float64, requires_grad=True)
    loss = InvariantSpreadingLoss()(z, z)
    # every P is 1/4: -(4 log(1/4) + 12 log(3/4)) / 4
    torch.testing.assert_close(loss.item(), -(4 * math.log(0.25) + 12 * math.log(0.75)) / 4)
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_errors():
    with pytest.raises(ValueError, match="one shape"):
        InvariantSpreadingLoss()(torch.randn(4, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        InvariantSpreadingLoss(temperature=-1.0)
