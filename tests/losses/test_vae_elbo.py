"""VAE ELBO: Gaussian log-likelihood and KL against torch.distributions and a hand case, variants."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from hvkit_plugins.losses.vae_elbo import VAEELBOLoss


def _inputs(b: int = 3) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(b)
    x = torch.rand(b, 1, 4, 4, generator=g, dtype=torch.float64)
    recon = torch.rand(b, 1, 4, 4, generator=g, dtype=torch.float64).requires_grad_()
    mu = torch.randn(b, 6, generator=g, dtype=torch.float64).requires_grad_()
    logvar = (0.5 * torch.randn(b, 6, generator=g, dtype=torch.float64)).requires_grad_()
    return x, recon, mu, logvar


def test_hand_computed_case():
    loss = VAEELBOLoss().double()
    one = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    # -log N(1; 0, 1) = 1/2 + log(2 pi)/2;  KL(N(1, 1) || N(0, 1)) = 1/2
    mu, logvar = torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)
    value = loss(one, torch.zeros_like(one), mu, logvar)
    torch.testing.assert_close(value.item(), 0.5 + 0.5 * math.log(2 * math.pi) + 0.5)


@pytest.mark.parametrize("beta", [1.0, 0.25])
def test_gaussian_against_torch_distributions(beta):
    x, recon, mu, logvar = _inputs()
    loss = VAEELBOLoss(beta=beta).double()
    with torch.no_grad():
        loss.log_scale.fill_(-0.7)
    log_likelihood = Normal(recon, math.exp(-0.7)).log_prob(x).sum(dim=(1, 2, 3))
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(dim=1)
    torch.testing.assert_close(loss(x, recon, mu, logvar), (-log_likelihood + beta * kl).mean())
    torch.testing.assert_close(loss.terms()["reconstruction"], -log_likelihood.mean().detach())
    torch.testing.assert_close(loss.terms()["kl"], kl.mean().detach())


def test_mse_and_bce_reconstructions():
    x, recon, mu, logvar = _inputs()
    kl = (-0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(dim=1)).mean()
    mse = ((x - recon) ** 2).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(VAEELBOLoss("mse")(x, recon, mu, logvar), mse + kl)
    bce = -(x * recon.log() + (1 - x) * (1 - recon).log()).sum(dim=(1, 2, 3)).mean()
    torch.testing.assert_close(VAEELBOLoss("bce")(x, recon, mu, logvar), bce + kl)
    assert VAEELBOLoss("mse").log_scale is None


def test_sum_over_pixels_and_latents_mean_over_batch():
    x, recon, mu, logvar = _inputs()
    loss = VAEELBOLoss("mse")
    one = loss(x, recon, mu, logvar)
    twice_the_batch = loss(x.repeat(2, 1, 1, 1), recon.repeat(2, 1, 1, 1),
                           mu.repeat(2, 1), logvar.repeat(2, 1))
    torch.testing.assert_close(twice_the_batch, one)
    twice_the_size = loss(x.repeat(1, 2, 1, 1), recon.repeat(1, 2, 1, 1),
                          mu.repeat(1, 2), logvar.repeat(1, 2))
    torch.testing.assert_close(twice_the_size, 2 * one)


def test_logvar_is_clamped():
    x, recon, mu, _ = _inputs()
    loss = VAEELBOLoss("mse", logvar_min=-3.0, logvar_max=2.0)
    high, low = torch.full_like(mu, 50.0), torch.full_like(mu, -50.0)
    torch.testing.assert_close(loss(x, recon, mu, high), loss(x, recon, mu, torch.full_like(mu, 2.0)))
    torch.testing.assert_close(loss(x, recon, mu, low), loss(x, recon, mu, torch.full_like(mu, -3.0)))


@pytest.mark.parametrize("reconstruction", ["gaussian", "mse", "bce"])
def test_gradcheck(reconstruction):
    x, recon, mu, logvar = _inputs(2)
    loss = VAEELBOLoss(reconstruction, beta=0.5).double()
    assert torch.autograd.gradcheck(lambda r, m, v: loss(x, r, m, v), (recon, mu, logvar))


def test_log_scale_is_learned():
    x, recon, mu, logvar = _inputs()
    loss = VAEELBOLoss().double()
    loss(x, recon, mu, logvar).backward()
    assert loss.log_scale.grad is not None and loss.log_scale.grad.item() != 0.0
    assert [name for name, _ in loss.named_parameters()] == ["log_scale"]


def test_errors():
    x, recon, mu, logvar = _inputs()
    with pytest.raises(ValueError, match="reconstruction"):
        VAEELBOLoss("l1")
    with pytest.raises(ValueError, match="beta"):
        VAEELBOLoss(beta=-1.0)
    with pytest.raises(ValueError, match="logvar_min"):
        VAEELBOLoss(logvar_min=1.0, logvar_max=0.0)
    with pytest.raises(ValueError, match="one shape"):
        VAEELBOLoss("mse")(x, recon[:, :, :2], mu, logvar)
    with pytest.raises(ValueError, match="one shape"):
        VAEELBOLoss("mse")(x, recon, mu, logvar[:, :3])


def test_runs_in_float32_under_autocast_and_accepts_half_inputs():
    x, recon, mu, logvar = (t.detach().float() for t in _inputs())
    loss = VAEELBOLoss("bce")
    expected = loss(x, recon, mu, logvar)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(loss(x, recon, mu, logvar), expected)
    value = loss(x, recon.half(), mu.half(), logvar.half())
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, expected, rtol=1e-2, atol=1e-2)
