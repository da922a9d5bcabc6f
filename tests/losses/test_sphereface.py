"""SphereFace: lambda schedule, value against a float64 re-derivation and PML (lambda 0), gradcheck, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.sphereface import SphereFaceLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 4, 2])


def _batch(n: int = 8, d: int = 6, seed: int = 3) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _sphereface(x: torch.Tensor, labels: torch.Tensor, w: torch.Tensor, m: int, lam: float) -> float:
    """Liu et al. 2017: target |x| (lam cos + psi)/(1 + lam), psi = (-1)^k cos(m theta) - 2k; others |x| cos."""
    total = 0.0
    for xi, yi in zip(x.detach().double(), labels.tolist()):
        norm = float(xi.norm())
        cos = [float(xi @ wj) / (norm * float(wj.norm())) for wj in w]
        theta = math.acos(cos[yi])
        k = math.floor(m * theta / math.pi)
        psi = (-1) ** k * math.cos(m * theta) - 2 * k
        logits = [norm * c for c in cos]
        logits[yi] = norm * (lam * cos[yi] + psi) / (1 + lam)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[yi]
    return total / len(labels)


def test_lambda_follows_the_papers_schedule_in_training_only():
    loss = SphereFaceLoss(embedding_dim=6, num_classes=5)
    x = _batch()
    for step in range(1, 4):
        loss(x, LABELS)
        assert loss.current_lambda().item() == pytest.approx(max(5.0, 1000.0 / (1 + 0.12 * step)))
    loss.eval()
    loss(x, LABELS)
    assert int(loss.iteration) == 3
    loss.iteration.fill_(10_000)
    assert loss.current_lambda().item() == 5.0  # 1000 / (1 + 1200) < lambda_min
    custom = SphereFaceLoss(embedding_dim=6, num_classes=5, base=50.0, gamma=0.5, power=2.0, lambda_min=0.0)
    custom.iteration.fill_(3)
    assert custom.current_lambda().item() == pytest.approx(50.0 * 2.5 ** -2)


def test_iteration_is_saved_and_restored_with_the_state():
    loss = SphereFaceLoss(embedding_dim=6, num_classes=5)
    for _ in range(7):
        loss(_batch(), LABELS)
    resumed = SphereFaceLoss(embedding_dim=6, num_classes=5)
    resumed.load_state_dict(loss.state_dict())
    assert int(resumed.iteration) == 7
    torch.testing.assert_close(resumed.current_lambda(), loss.current_lambda())


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
@pytest.mark.parametrize("iteration", [1, 50, 10_000])
def test_value_equals_float64_derivation(margin, iteration):
    loss = SphereFaceLoss(embedding_dim=6, num_classes=5, margin=margin).double().eval()
    loss.iteration.fill_(iteration)
    lam = max(5.0, 1000.0 / (1 + 0.12 * iteration))
    x = _batch()
    expected = _sphereface(x, LABELS, loss.weight.detach(), margin, lam)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # PML's SphereFaceLoss calls scipy.special.binom on tensors
@pytest.mark.parametrize("mined", [None, (torch.tensor([0, 1]), torch.tensor([3, 5]), torch.tensor([2, 2]))])
def test_without_lambda_it_equals_pml(mined):
    ours = SphereFaceLoss(embedding_dim=6, num_classes=5, base=0.0, lambda_min=0.0).double()
    pml = pml_losses.SphereFaceLoss(num_classes=5, embedding_size=6, margin=4, scale=1).double()
    pml.W.data.copy_(ours.weight.data.T)
    x = _batch()
    torch.testing.assert_close(ours(x, LABELS, mined), pml(x, LABELS, mined))


def test_gradcheck():
    loss = SphereFaceLoss(embedding_dim=4, num_classes=3).double().eval()
    loss.iteration.fill_(20)
    x = _batch(6, 4)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    weight = loss.weight.detach().clone().requires_grad_()

    def f(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, {"weight": weight}, (x, labels))

    assert torch.autograd.gradcheck(f, (x, weight))


def test_weights_are_parameters_that_receive_gradients():
    loss = SphereFaceLoss(embedding_dim=6, num_classes=5)
    assert [p.shape for p in loss.parameters()] == [torch.Size([5, 6])]
    loss(_batch(), LABELS).backward()
    assert loss.weight.grad is not None and loss.weight.grad.abs().sum() > 0


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal
    check_loss(SphereFaceLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 0}, "margin"), ({"base": -1.0}, "non-negative"), ({"lambda_min": -1.0}, "non-negative"),
    ({"num_classes": 1}, "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SphereFaceLoss(**{"embedding_dim": 6, "num_classes": 5, **kwargs})


def test_labels_out_of_range_raise():
    with pytest.raises(ValueError, match="num_classes"):
        SphereFaceLoss(embedding_dim=6, num_classes=5)(_batch(), LABELS + 1)
