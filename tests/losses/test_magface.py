"""MagFace: value and gradient against a float64 derivation of the paper's loss, the magnitude clamp, the limit
below l_a (ArcFace), the terms, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.magface import MagFaceLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 13) -> torch.Tensor:
    """Embeddings of norms 2 to 150: below l_a, inside [10, 110] and above u_a."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=1)
    norms = torch.tensor([2.0, 15.0, 40.0, 60.0, 90.0, 105.0, 130.0, 150.0], dtype=torch.float64)[:, None]
    return (x * norms).requires_grad_()


def _magface(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, s: float = 64.0, l_a: float = 10.0,
             u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8, lam: float = 20.0) -> torch.Tensor:
    """Meng et al. 2021, Eq. 6 with the official code's easy margin, sample by sample in float64:
    cross-entropy with target s cos(theta + m(a)) where cos theta > 0, plus lambda mean(a / u_a^2 + 1 / a)."""
    ce, g = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for z, y in zip(x, labels.tolist()):
        a = z.norm().clamp(l_a, u_a)
        m = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m
        logits = []
        for j in range(w.shape[0]):
            cos = z @ w[j] / (z.norm() * w[j].norm())
            if j == y and cos > 0:
                cos = torch.cos(torch.acos(cos) + m)
            logits.append(s * cos)
        logits = torch.stack(logits)
        ce = ce + torch.logsumexp(logits, 0) - logits[y]
        g = g + a / u_a ** 2 + 1 / a
    return ce / len(labels) + lam * g / len(labels)


def test_value_and_gradient_equal_the_float64_derivation():
    loss = MagFaceLoss(embedding_dim=6, num_classes=5, scale=16.0).double()
    x = _batch()
    value = loss(x, LABELS)
    w = loss.weight.detach().clone().requires_grad_()
    expected = _magface(x, LABELS, w, s=16.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    got_x, got_w = torch.autograd.grad(value, (x, loss.weight))
    want_x, want_w = torch.autograd.grad(expected, (x, w))
    torch.testing.assert_close(got_x, want_x, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(got_w, want_w, rtol=1e-9, atol=1e-12)
    radial = (got_x * x.detach()).sum(dim=1) / x.detach().norm(dim=1)  # the gradient along each embedding
    assert radial[[0, 6, 7]].abs().max().item() < 1e-12  # the clamp stops it outside [l_a, u_a]
    assert radial[1:6].abs().min().item() > 1e-6


def test_terms_are_the_two_parts():
    loss = MagFaceLoss(embedding_dim=6, num_classes=5, lambda_g=35.0).double()
    x = _batch()
    value = loss(x, LABELS)
    terms = loss.terms()
    a = x.detach().norm(dim=1).clamp(10, 110)
    assert terms["magnitude"].item() == pytest.approx((a / 110 ** 2 + 1 / a).mean().item(), rel=1e-12)
    assert value.item() == pytest.approx(terms["identity"].item() + 35.0 * terms["magnitude"].item(), rel=1e-12)


def test_below_l_a_it_is_arcface_with_the_lowest_margin_plus_a_constant():
    """Magnitudes under l_a are clamped to it: the margin is l_m and g is g(l_a), for targets with cos > 0."""
    mag, arc = MagFaceLoss(6, 5, scale=16.0).double(), ArcFaceLoss(6, 5, margin=0.45, scale=16.0).double()
    arc.weight.data.copy_(mag.weight.data)
    noise = torch.nn.functional.normalize(_batch().detach(), dim=1)
    x = torch.nn.functional.normalize(mag.weight.detach()[LABELS] + 0.3 * noise, dim=1) * 3
    assert (torch.nn.functional.cosine_similarity(x, mag.weight.detach()[LABELS]) > 0).all()
    constant = 20.0 * (10 / 110 ** 2 + 1 / 10)
    torch.testing.assert_close(mag(x, LABELS), arc(x, LABELS) + constant)


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(MagFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"l_a": 0.0}, "l_a"), ({"l_a": 120.0}, "l_a"), ({"l_margin": 0.9}, "l_margin"),
    ({"u_margin": math.pi}, "u_margin"), ({"lambda_g": -1.0}, "lambda_g"), ({"scale": 0.0}, "scale"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MagFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})
