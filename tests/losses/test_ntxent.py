"""NT-Xent: value and gradient against pytorch-metric-learning with instance labels, formula, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit_plugins.losses.ntxent import NTXentLoss


def _views(n: int, d: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(n + d)
    z_a = torch.randn(n, d, generator=g, dtype=dtype)
    z_b = z_a + 0.8 * torch.randn(n, d, generator=g, dtype=dtype)
    return z_a.requires_grad_(), z_b.requires_grad_()


def _pml(z_a: torch.Tensor, z_b: torch.Tensor, temperature: float) -> torch.Tensor:
    instance = torch.arange(z_a.shape[0])
    loss = pml_losses.NTXentLoss(temperature=temperature)
    return loss(torch.cat([z_a, z_b]), torch.cat([instance, instance]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_value_and_gradient_equal_pml(dtype, temperature):
    z_a, z_b = _views(12, 6, dtype)
    ours = NTXentLoss(temperature)(z_a, z_b)
    pml = _pml(z_a, z_b, temperature)
    torch.testing.assert_close(ours, pml)
    for g_ours, g_pml in zip(torch.autograd.grad(ours, (z_a, z_b)), torch.autograd.grad(pml, (z_a, z_b))):
        torch.testing.assert_close(g_ours, g_pml)


def test_value_against_formula():
    z_a, z_b = _views(4, 3, torch.float64)
    z = torch.nn.functional.normalize(torch.cat([z_a, z_b]).detach(), dim=1)
    n, tau = 4, 0.2
    total = 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denominator = sum(math.exp(z[i] @ z[k] / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(z[i] @ z[j] / tau) / denominator)
    torch.testing.assert_close(NTXentLoss(tau)(z_a, z_b).item(), total / (2 * n))


def test_default_temperature_is_0_1():
    assert NTXentLoss().temperature == 0.1


def test_gradcheck():
    z_a, z_b = _views(3, 4, torch.float64)
    assert torch.autograd.gradcheck(NTXentLoss(0.5), (z_a, z_b))


def test_all_equal_embeddings_give_log_of_candidates():
    z = torch.ones(5, 3, dtype=torch.float64)
    torch.testing.assert_close(NTXentLoss()(z, z).item(), math.log(2 * 5 - 1))


def test_errors():
    with pytest.raises(ValueError, match="at least 2"):
        NTXentLoss()(torch.randn(1, 4), torch.randn(1, 4))
    with pytest.raises(ValueError, match="one shape"):
        NTXentLoss()(torch.randn(4, 4), torch.randn(4, 5))
    with pytest.raises(ValueError, match="temperature"):
        NTXentLoss(temperature=0.0)
