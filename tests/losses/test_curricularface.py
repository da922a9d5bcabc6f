"""CurricularFace: value and gradient against a float64 derivation of the paper's logits, the curriculum t,
edges, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.curricularface import CurricularFaceLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 9) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _curricular(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, t: float, m: float = 0.5,
                s: float = 64.0) -> tuple[torch.Tensor, int]:
    """Huang et al. 2020, Eq. 8-10, sample by sample in float64: the target T(cos theta_y) = cos(theta_y + m)
    (cos theta_y - m sin m past pi - m); a negative with cos theta_j > cos(theta_y + m) becomes
    cos theta_j (t + cos theta_j). Returns the loss and the number of hard negatives met."""
    total, hard = torch.zeros((), dtype=torch.float64), 0
    for z, y in zip(x, labels.tolist()):
        cos = torch.stack([z @ w[j] / (z.norm() * w[j].norm()) for j in range(w.shape[0])])
        theta = torch.acos(cos[y])
        shifted = torch.cos(theta + m)
        logits = []
        for j in range(w.shape[0]):
            if j == y:
                logits.append(s * (shifted if theta <= math.pi - m else cos[y] - m * math.sin(m)))
            elif cos[j] > shifted:
                hard += 1
                logits.append(s * cos[j] * (t + cos[j]))
            else:
                logits.append(s * cos[j])
        logits = torch.stack(logits)
        total = total + torch.logsumexp(logits, 0) - logits[y]
    return total / len(labels), hard


@pytest.mark.parametrize("t", [0.0, 0.4])
def test_value_and_gradient_equal_the_float64_derivation_in_eval_mode(t):
    loss = CurricularFaceLoss(embedding_dim=6, num_classes=5, scale=8.0).double().eval()
    loss.t.fill_(t)
    x = _batch()
    value = loss(x, LABELS)
    w = loss.weight.detach().clone().requires_grad_()
    expected, hard = _curricular(x, LABELS, w, t, s=8.0)
    assert hard > 3  # the modulation is met, on several negatives
    assert value.item() == pytest.approx(expected.item(), rel=1e-10)
    for got, want in zip(torch.autograd.grad(value, (x, loss.weight)), torch.autograd.grad(expected, (x, w))):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
    assert loss.t.item() == t  # eval mode leaves the curriculum


def test_training_moves_t_before_using_it():
    loss = CurricularFaceLoss(embedding_dim=6, num_classes=5, scale=8.0).double()
    loss.t.fill_(0.2)
    x = _batch()
    value = loss(x, LABELS)
    w = loss.weight.detach()
    targets = torch.nn.functional.cosine_similarity(x.detach(), w[LABELS], dim=1)
    t = 0.01 * targets.mean().item() + 0.99 * 0.2
    assert loss.t.item() == pytest.approx(t, rel=1e-12)
    assert value.item() == pytest.approx(_curricular(x, LABELS, w, t, s=8.0)[0].item(), rel=1e-10)
    assert list(loss.state_dict()) == ["weight", "t"]


def test_with_t_at_zero_and_no_hard_negative_it_is_arcface():
    """Each sample on its own class weight: no negative beats cos(theta_y + m), so the logits are ArcFace's."""
    curricular, arcface = CurricularFaceLoss(6, 5).double().eval(), ArcFaceLoss(6, 5).double()
    arcface.weight.data.copy_(curricular.weight.data)
    x = curricular.weight.detach()[LABELS] + 0.01 * _batch().detach()
    torch.testing.assert_close(curricular(x, LABELS), arcface(x, LABELS))


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(CurricularFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 28.6}, "radians"), ({"scale": 0.0}, "scale"), ({"num_classes": 1}, "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CurricularFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})
