"""ArcFace: radians vs PML's degrees, value against a float64 re-derivation and PML, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.arcface import ArcFaceLoss

from .pair_batch import assert_same_classifier_as_pml

MINED = (torch.tensor([0, 1]), torch.tensor([3, 5]), torch.tensor([2, 2]))  # a miner's triplets
LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _arcface(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, m: float, s: float) -> float:
    """Deng et al. 2019: target logit s*cos(theta+m) (s*(cos(theta) - m sin m) past pi - m), others s*cos."""
    total = 0.0
    for xi, yi in zip(x.detach().double(), labels.tolist()):
        logits = []
        for j in range(w.shape[1]):
            cos = float(xi @ w[:, j] / (xi.norm() * w[:, j].norm()))
            if j == yi:
                theta = math.acos(cos)
                cos = math.cos(theta + m) if theta <= math.pi - m else cos - m * math.sin(m)
            logits.append(s * cos)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[yi]
    return total / len(labels)


def test_half_a_radian_is_pmls_28_6479_degrees():
    ours = ArcFaceLoss(embedding_dim=6, num_classes=5).double()
    pml = pml_losses.ArcFaceLoss(num_classes=5, embedding_size=6, margin=28.6479, scale=64).double()
    pml.W.data.copy_(ours.weight.data.T)
    assert ours.margin == pytest.approx(0.5, abs=1e-12)
    x = _batch()
    torch.testing.assert_close(ours(x, LABELS), pml(x, LABELS), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("margin", "scale"), [(0.5, 64.0), (0.3, 30.0)])
def test_value_equals_float64_derivation(margin, scale):
    loss = ArcFaceLoss(embedding_dim=6, num_classes=5, margin=margin, scale=scale).double()
    x = _batch()
    expected = _arcface(x, LABELS, loss.weight.detach().T, margin, scale)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_angles_past_pi_minus_m_use_the_monotonic_fallback():
    loss = ArcFaceLoss(embedding_dim=6, num_classes=5, scale=10.0).double()
    w = loss.weight.detach().T
    x = (-w[:, LABELS] + 0.01 * _batch().detach().T).T.requires_grad_()  # each x points away from its class
    expected = _arcface(x, LABELS, w, 0.5, 10.0)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("mined", [None, MINED])
def test_gradients_equal_pmls_including_a_target_past_pi_minus_m(mined):
    ours = ArcFaceLoss(embedding_dim=6, num_classes=5, margin=0.4, scale=16.0).double()
    pml = pml_losses.ArcFaceLoss(num_classes=5, embedding_size=6, margin=math.degrees(0.4), scale=16).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch().detach()
    x[1] = -ours.weight.detach()[1] + 0.01 * x[1]  # theta near pi: the monotonic fallback
    x.requires_grad_()
    assert_same_classifier_as_pml(ours, pml, x, LABELS, mined)


def test_an_embedding_on_its_class_weight_has_a_finite_gradient():
    """cos theta = 1 exactly: sin theta = sqrt(1 - cos^2) is clamped under the root, where PML's acos is not."""
    loss = ArcFaceLoss(embedding_dim=6, num_classes=5).double()
    x = loss.weight.detach()[LABELS].clone().requires_grad_()
    loss(x, LABELS).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(loss.weight.grad).all()


def test_miner_tuple_weights_samples_like_pml():
    ours = ArcFaceLoss(embedding_dim=6, num_classes=5).double()
    pml = pml_losses.ArcFaceLoss(num_classes=5, embedding_size=6, margin=math.degrees(0.5), scale=64).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    mined = MINED
    torch.testing.assert_close(ours(x, LABELS, mined), pml(x, LABELS, mined))
    assert ours(x, LABELS, mined).item() != pytest.approx(ours(x, LABELS).item())


def test_weights_are_parameters_that_receive_gradients_and_keep_their_dtype():
    loss = ArcFaceLoss(embedding_dim=6, num_classes=5)
    assert [p.shape for p in loss.parameters()] == [torch.Size([5, 6])]
    loss(_batch(), LABELS).backward()  # float64 embeddings: PML alone would cast W to float64 in place
    assert loss.weight.dtype == torch.float32
    assert loss.weight.grad is not None and loss.weight.grad.abs().sum() > 0


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(ArcFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 28.6}, "radians"), ({"margin": -0.1}, "radians"), ({"scale": 0.0}, "scale"),
    ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ArcFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})


def test_bad_batches_raise():
    loss = ArcFaceLoss(embedding_dim=6, num_classes=5)
    with pytest.raises(ValueError, match=r"lie in \[0, 5\)"):
        loss(_batch(), LABELS + 1)
    with pytest.raises(ValueError, match="embedding_dim"):
        loss(_batch(d=7), LABELS)
