"""ElasticFace-Arc and -Cos (and their + variants): value and gradient against a float64 derivation with the
same drawn margins, the fixed margin in eval mode (ArcFace's and CosFace's), the draws' spread, edges, errors."""

from __future__ import annotations

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.cosface import CosFaceLoss
from hvkit_plugins.losses.elasticface import ElasticArcFaceLoss, ElasticCosFaceLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _elastic(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, margins: torch.Tensor, arc: bool,
             s: float) -> torch.Tensor:
    """Boutros et al. 2022, Eq. 4 and 5, sample by sample in float64: the target's angle plus its own margin
    (Arc) or its cosine minus it (Cos)."""
    total = torch.zeros((), dtype=torch.float64)
    for z, y, m in zip(x, labels.tolist(), margins.tolist()):
        logits = []
        for j in range(w.shape[0]):
            cos = z @ w[j] / (z.norm() * w[j].norm())
            if j == y:
                cos = torch.cos(torch.acos(cos) + m) if arc else cos - m
            logits.append(s * cos)
        logits = torch.stack(logits)
        total = total + torch.logsumexp(logits, 0) - logits[y]
    return total / len(labels)


@pytest.mark.parametrize("factory, arc", [(ElasticArcFaceLoss, True), (ElasticCosFaceLoss, False)])
def test_value_and_gradient_equal_the_float64_derivation_with_the_same_draws(factory, arc):
    loss = factory(embedding_dim=6, num_classes=5, scale=16.0, std=0.1).double()
    x = _batch()
    torch.manual_seed(11)
    value = loss(x, LABELS)
    torch.manual_seed(11)
    margins = torch.normal(loss.margin, 0.1, (8, 1), dtype=torch.float64).squeeze(1)
    assert margins.std().item() > 0.03  # the draws differ from sample to sample
    w = loss.weight.detach().clone().requires_grad_()
    expected = _elastic(x, LABELS, w, margins, arc, 16.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(torch.autograd.grad(value, (x, loss.weight)), torch.autograd.grad(expected, (x, w))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("factory, arc", [(ElasticArcFaceLoss, True), (ElasticCosFaceLoss, False)])
def test_plus_deals_the_sorted_draws_largest_to_the_sample_farthest_from_its_centre(factory, arc):
    """ElasticFace+ against the float64 derivation with the same draws dealt by hand: the targets' cosines
    ranked, the k-th nearest its class centre given the k-th smallest margin."""
    loss = factory(embedding_dim=6, num_classes=5, scale=16.0, std=0.1, plus=True).double()
    x = _batch()
    torch.manual_seed(11)
    value = loss(x, LABELS)
    torch.manual_seed(11)
    draws = sorted(torch.normal(loss.margin, 0.1, (8, 1), dtype=torch.float64).squeeze(1).tolist())
    w = loss.weight.detach().clone().requires_grad_()
    target = [float(z @ w[y].detach() / (z.norm() * w[y].detach().norm())) for z, y in zip(x.detach(), LABELS.tolist())]
    nearest_first = sorted(range(8), key=lambda i: -target[i])
    margins = torch.zeros(8, dtype=torch.float64)
    for k, i in enumerate(nearest_first):
        margins[i] = draws[k]
    assert margins[nearest_first[0]] == min(draws) and margins[nearest_first[-1]] == max(draws)
    assert nearest_first != list(range(8)) and nearest_first != list(range(8))[::-1]  # a real reordering
    expected = _elastic(x, LABELS, w, margins, arc, 16.0)
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(torch.autograd.grad(value, (x, loss.weight)), torch.autograd.grad(expected, (x, w))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    plain = factory(embedding_dim=6, num_classes=5, scale=16.0, std=0.1).double()
    plain.weight.data.copy_(loss.weight.data)
    torch.manual_seed(11)
    assert plain(x, LABELS).item() != pytest.approx(value.item(), rel=1e-6)  # same draws, dealt otherwise


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("factory, fixed", [(ElasticArcFaceLoss, ArcFaceLoss), (ElasticCosFaceLoss, CosFaceLoss)])
def test_eval_mode_and_no_spread_give_the_fixed_margin(factory, fixed, plus):
    """The mean margin: ArcFace's (no target past pi - m here, where ArcFace alone falls back) or CosFace's."""
    elastic, reference = factory(6, 5, plus=plus).double(), fixed(6, 5).double()
    reference.weight.data.copy_(elastic.weight.data)
    x = _batch()
    expected = reference(x, LABELS)
    torch.testing.assert_close(elastic.eval()(x, LABELS), expected)
    still = factory(6, 5, std=0.0, plus=plus).double()
    still.weight.data.copy_(elastic.weight.data)
    torch.testing.assert_close(still(x, LABELS), expected)


def test_training_draws_anew_each_step():
    loss = ElasticCosFaceLoss(6, 5).double()
    x = _batch()
    assert loss(x, LABELS).item() != loss(x, LABELS).item()


@pytest.mark.parametrize("plus", [False, True])
@pytest.mark.parametrize("factory", [ElasticArcFaceLoss, ElasticCosFaceLoss])
def test_conforms_on_edge_batches(factory, plus):  # one class, one sample per class, all embeddings equal
    check_loss(factory, {"plus": plus})


@pytest.mark.parametrize(("factory", "kwargs", "message"), [
    (ElasticArcFaceLoss, {"margin": 28.6}, "radians"), (ElasticCosFaceLoss, {"margin": 1.2}, "margin"),
    (ElasticArcFaceLoss, {"std": -0.1}, "std"), (ElasticCosFaceLoss, {"std": 1.0}, "std"),
    (ElasticArcFaceLoss, {"scale": 0.0}, "scale"),
])
def test_invalid_settings_raise(factory, kwargs, message):
    with pytest.raises(ValueError, match=message):
        factory(**{"embedding_dim": 6, "num_classes": 5, **kwargs})


def test_defaults_are_the_papers():
    arc, cos = ElasticArcFaceLoss(6, 5), ElasticCosFaceLoss(6, 5)
    assert (arc.margin, arc.scale, arc.std, arc.plus) == (0.5, 64.0, 0.05, False)
    assert (cos.margin, cos.scale, cos.std, cos.plus) == (0.35, 64.0, 0.05, False)
