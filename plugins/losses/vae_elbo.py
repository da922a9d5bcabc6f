"""Negative ELBO of a Gaussian VAE, as trained in SSL-HV (Chauhan et al. 2024)."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._precision import full_precision


def gaussian_nll(x: torch.Tensor, recon: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Per-sample ``-log N(x; recon, sigma^2 I)``, summed over non-batch dims, ``sigma = exp(log_scale)``."""
    nll = 0.5 * ((x - recon) * torch.exp(-log_scale)).pow(2) + log_scale + 0.5 * math.log(2 * math.pi)
    return nll.flatten(1).sum(dim=1)


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Per-sample ``KL(N(mu, diag(exp(logvar))) || N(0, I)) = -1/2 sum (1 + logvar - mu^2 - exp(logvar))``."""
    return -0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).flatten(1).sum(dim=1)


class VAEELBOLoss(nn.Module):
    """Negative ELBO of a Gaussian VAE: reconstruction + beta * KL(q(z|x) || N(0, I)), summed per sample.

    ``forward(x, recon, mu, logvar)`` returns ``mean_b [ R_b + beta * KL_b ]`` where both terms are
    *summed* over pixels and latent dimensions of sample b and *averaged* over the batch.
    ``R`` is, by ``reconstruction``:

    * ``"gaussian"`` (default, SSL-HV): ``-log N(x; recon, sigma^2)`` with one learned global
      ``log_scale = log sigma`` (a parameter of this loss, initialised to 0; the optimiser must
      include ``loss.parameters()``),
    * ``"mse"``: ``sum (x - recon)^2``,
    * ``"bce"``: binary cross-entropy of ``recon`` (probabilities in [0, 1]) against ``x`` in [0, 1].

    The KL is in closed form (SSL-HV estimated it by Monte Carlo: the same expectation).
    ``logvar`` is clamped to ``[logvar_min, logvar_max]`` (default [-30, 20]) before use.
    Per-sample sums run in float32 at least, with autocast off. After a call, ``terms()`` gives
    its detached batch means ``reconstruction`` and ``kl`` for logging.
    """

    def __init__(self, reconstruction: Literal["gaussian", "mse", "bce"] = "gaussian", beta: float = 1.0,
                 logvar_min: float = -30.0, logvar_max: float = 20.0) -> None:
        super().__init__()
        if reconstruction not in ("gaussian", "mse", "bce"):
            raise ValueError(f"vae_elbo: reconstruction must be 'gaussian', 'mse' or 'bce', "
                             f"got {reconstruction!r}")
        if beta < 0:
            raise ValueError(f"vae_elbo: beta must be >= 0, got {beta}")
        if logvar_min >= logvar_max:
            raise ValueError(f"vae_elbo: logvar_min ({logvar_min}) must be below logvar_max ({logvar_max})")
        self.reconstruction = reconstruction
        self.beta = beta
        self.logvar_min = logvar_min
        self.logvar_max = logvar_max
        self.log_scale = nn.Parameter(torch.zeros(())) if reconstruction == "gaussian" else None
        self._terms: dict[str, torch.Tensor] = {}

    @full_precision
    def forward(self, x: torch.Tensor, recon: torch.Tensor, mu: torch.Tensor,
                logvar: torch.Tensor) -> torch.Tensor:
        if x.shape != recon.shape or mu.shape != logvar.shape or x.shape[0] != mu.shape[0]:
            raise ValueError(f"vae_elbo: expected x, recon of one shape and mu, logvar (B, L) of one shape, "
                             f"got {tuple(x.shape)}, {tuple(recon.shape)}, {tuple(mu.shape)}, "
                             f"{tuple(logvar.shape)}")
        if self.reconstruction == "gaussian":
            reconstruction = gaussian_nll(x, recon, self.log_scale)
        elif self.reconstruction == "mse":
            reconstruction = (x - recon).pow(2).flatten(1).sum(dim=1)
        else:
            reconstruction = F.binary_cross_entropy(recon, x, reduction="none").flatten(1).sum(dim=1)
        kl = kl_to_standard_normal(mu, logvar.clamp(self.logvar_min, self.logvar_max))
        self._terms = {"reconstruction": reconstruction.mean().detach(), "kl": kl.mean().detach()}
        return (reconstruction + self.beta * kl).mean()

    def terms(self) -> dict[str, torch.Tensor]:
        """The last call's detached batch means: ``reconstruction`` (R) and ``kl`` (unweighted by beta)."""
        return dict(self._terms)
