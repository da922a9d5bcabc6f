"""AdaFace: value and gradient against a float64 derivation of the paper's margin, the running norm statistics,
its limits (equal norms: CosFace), edges, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.cosface import CosFaceLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])
EPS = 1e-3


def _batch(n: int = 8, d: int = 6, seed: int = 3) -> torch.Tensor:
    """Embeddings of unequal norms (0.5 to 8), as a network's before any normalisation."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    return (x * (0.5 + 7.5 * torch.rand(n, 1, generator=g, dtype=torch.float64))).requires_grad_()


def _adaface(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, mu: float, sigma: float, m: float = 0.4,
             h: float = 0.333, s: float = 64.0) -> torch.Tensor:
    """Kim et al. 2022, Eq. 8-11, sample by sample in float64: q_i = clip(h (|z_i| - mu) / (sigma + eps), -1, 1),
    target logit s (cos(clip(theta - m q, eps, pi - eps)) - (m + m q)), cosines kept 1e-3 inside [-1, 1]."""
    total = torch.zeros((), dtype=torch.float64)
    for z, y in zip(x, labels.tolist()):
        q = min(1.0, max(-1.0, h * (min(100.0, max(0.001, float(z.detach().norm()))) - mu) / (sigma + EPS)))
        logits = []
        for j in range(w.shape[0]):
            cos = (z @ w[j] / (z.norm() * w[j].norm())).clamp(-1 + EPS, 1 - EPS)
            if j == y:
                theta = (torch.acos(cos) - m * q).clamp(EPS, math.pi - EPS)
                cos = torch.cos(theta) - (m + m * q)
            logits.append(s * cos)
        logits = torch.stack(logits)
        total = total + torch.logsumexp(logits, 0) - logits[y]
    return total / len(labels)


def test_value_and_gradient_equal_the_float64_derivation():
    loss = AdaFaceLoss(embedding_dim=6, num_classes=5, t_alpha=1.0).double()  # the batch's own statistics
    x = _batch()
    value = loss(x, LABELS)
    norms = x.detach().norm(dim=1)
    assert (loss.norm_mean.item(), loss.norm_std.item()) == pytest.approx((norms.mean().item(), norms.std().item()))
    w = loss.weight.detach().clone().requires_grad_()
    expected = _adaface(x, LABELS, w, norms.mean().item(), norms.std().item())
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    got = torch.autograd.grad(value, (x, loss.weight))
    want = torch.autograd.grad(expected, (x, w))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_quality_spans_both_ends():
    """With a large h the qualities reach -1 (ArcFace's margin, none additive) and +1 (the angle made smaller
    by m, twice m subtracted), and the value still equals the derivation."""
    loss = AdaFaceLoss(embedding_dim=6, num_classes=5, h=10.0, t_alpha=1.0).double()
    x = _batch()
    q = loss.quality(x).squeeze(1)
    assert q.max().item() == 1.0 and q.min().item() == -1.0
    w = loss.weight.detach()
    assert loss(x, LABELS).item() == pytest.approx(
        _adaface(x, LABELS, w, loss.norm_mean.item(), loss.norm_std.item(), h=10.0).item(), rel=1e-10)


def test_the_running_statistics_move_in_training_only():
    loss = AdaFaceLoss(embedding_dim=6, num_classes=5).double()
    x = _batch()
    norms = x.detach().norm(dim=1)
    loss(x, LABELS)
    assert loss.norm_mean.item() == pytest.approx(0.01 * norms.mean().item() + 0.99 * 20, rel=1e-12)
    assert loss.norm_std.item() == pytest.approx(0.01 * norms.std().item() + 0.99 * 100, rel=1e-12)
    moved = loss.state_dict()
    loss.eval()
    loss(x, LABELS)
    loss(x[:1], LABELS[:1])
    assert all(torch.equal(a, b) for a, b in zip(moved.values(), loss.state_dict().values()))
    loss.train()
    loss(x[:1], LABELS[:1])  # one image has no standard deviation: the statistics stay
    assert torch.isfinite(loss.norm_std) and loss.norm_mean.item() == moved["norm_mean"].item()
    assert sorted(moved) == ["norm_mean", "norm_std", "weight"]


def test_equal_norms_give_cosface_on_the_clamped_cosines():
    """L2-normalised embeddings all have quality 0: the target logit is s (cos theta - m), CosFace's."""
    ada = AdaFaceLoss(embedding_dim=6, num_classes=5, margin=0.3, scale=16.0).double()
    cos = CosFaceLoss(embedding_dim=6, num_classes=5, margin=0.3, scale=16.0).double()
    cos.weight.data.copy_(ada.weight.data)
    x = torch.nn.functional.normalize(_batch().detach(), dim=1) * 20  # the initial mean norm: q = 0 exactly
    assert ada.quality(x).abs().max().item() < 1e-12
    torch.testing.assert_close(ada(x, LABELS), cos(x, LABELS))


def test_the_lowest_quality_gives_arcface():
    """q = -1 for every image (norms far under the running mean, eval mode): the target logit is
    s cos(theta_y + m), ArcFace's, for targets well inside pi - m."""
    ada = AdaFaceLoss(embedding_dim=6, num_classes=5, margin=0.4, scale=16.0).double().eval()
    arc = ArcFaceLoss(embedding_dim=6, num_classes=5, margin=0.4, scale=16.0).double()
    arc.weight.data.copy_(ada.weight.data)
    ada.norm_mean.fill_(90.0), ada.norm_std.fill_(1.0)
    x = (ada.weight.detach()[LABELS] + 0.3 * _batch().detach()).requires_grad_()
    assert torch.equal(ada.quality(x), -torch.ones(8, 1, dtype=torch.float64))
    torch.testing.assert_close(ada(x, LABELS), arc(x, LABELS))


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(AdaFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 2.0}, "margin"), ({"h": 0.0}, "h must be positive"), ({"t_alpha": 0.0}, "t_alpha"),
    ({"t_alpha": 1.5}, "t_alpha"), ({"scale": -1.0}, "scale"), ({"num_classes": 1}, "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})
