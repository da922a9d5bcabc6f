"""NBC-Softmax: both forms against a float64 re-derivation of the formula, gradcheck, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch

from hvkit.testing import check_loss
from hvkit_plugins.losses.nbc_softmax import NBCSoftmaxLoss

LABELS = torch.tensor([0, 1, 2, 0, 3, 1, 1, 2, 5])  # class 3 and 5 have one sample, class 4 none


def _batch(n: int = 9, d: int = 5, seed: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).requires_grad_()


def _nbc_softmax(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 num_classes: int, w: float, tau: float, form: str) -> float:
    """CE of softmax(W x + b), and over the m classes present with mu_k the normalised class means:
    faithful 1/(C m) sum_k log(1 + sum_{l!=k} exp(tau cos)), normalised 1/m ... exp(cos / tau)."""
    x, labels = x.detach().double(), labels.tolist()
    ce = 0.0
    for xi, yi in zip(x, labels):
        logits = [float(weight[j] @ xi + bias[j]) for j in range(num_classes)]
        ce -= math.log(math.exp(logits[yi]) / sum(math.exp(v) for v in logits))
    ce /= len(labels)
    present = sorted(set(labels))
    means = [sum(xi for xi, yi in zip(x, labels) if yi == k) / labels.count(k) for k in present]
    means = [mu / float(mu.norm()) for mu in means]
    scale = (lambda c: tau * c) if form == "faithful" else (lambda c: c / tau)
    nbc = sum(math.log(1 + sum(math.exp(scale(float(mk @ ml))) for ml in means if ml is not mk)) for mk in means)
    nbc /= len(present) * (num_classes if form == "faithful" else 1)
    return w * ce + (1 - w) * nbc


@pytest.mark.parametrize("form", ["faithful", "normalised"])
@pytest.mark.parametrize(("w", "tau"), [(0.5, 0.2), (0.2, 0.7), (0.0, 0.1)])
def test_value_equals_float64_derivation(form, w, tau):
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6, ce_weight=w, tau=tau, form=form).double()
    x = _batch()
    expected = _nbc_softmax(x, LABELS, loss.classifier.weight.detach(), loss.classifier.bias.detach(),
                            6, w, tau, form)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_faithful_term_is_nearly_flat_and_normalised_is_not():
    x = _batch()
    grads = {}
    for form in ("faithful", "normalised"):
        loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6, ce_weight=0.0, form=form).double()
        grads[form] = torch.autograd.grad(loss(x, LABELS), x)[0].norm().item()
    assert grads["normalised"] > 50 * grads["faithful"]  # about C / tau^2 = 150, up to the softmax weights


@pytest.mark.parametrize("form", ["faithful", "normalised"])
def test_gradcheck(form):
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6, form=form).double()
    params = {name: p.detach().clone().requires_grad_() for name, p in loss.named_parameters()}

    def f(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(loss, {"classifier.weight": weight, "classifier.bias": bias},
                                          (x, LABELS))

    assert torch.autograd.gradcheck(f, (_batch(), params["classifier.weight"], params["classifier.bias"]))


def test_classifier_is_a_parameter_that_receives_gradients():
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6)
    assert loss.needs_global_batch
    assert [p.shape for p in loss.parameters()] == [torch.Size([6, 5]), torch.Size([6])]
    loss(_batch(), LABELS).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in loss.parameters())


@pytest.mark.parametrize("form", ["faithful", "normalised"])
def test_one_class_batch_has_no_contrastive_term(form):
    x, labels = _batch(), torch.full((9,), 2)
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6, form=form).double()
    ce = torch.nn.functional.cross_entropy(loss.classifier(x), labels)
    torch.testing.assert_close(loss(x, labels), 0.5 * ce)


@pytest.mark.parametrize("x", [torch.ones(9, 5), torch.cat([torch.ones(4, 5), -torch.ones(5, 5)])])
def test_equal_or_cancelling_embeddings_give_finite_values_and_gradients(x):
    x = x.double().requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1, 2])  # second case: class 0 and 1 means are zero
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6, form="normalised").double()(x, labels)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("form", ["faithful", "normalised"])
def test_conforms_on_edge_batches(form):
    check_loss(NBCSoftmaxLoss, {"form": form})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ce_weight": 1.5}, "ce_weight"), ({"tau": 0.0}, "tau"), ({"form": "scaled"}, "form"),
    ({"num_classes": 1}, "num_classes"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        NBCSoftmaxLoss(**{"embedding_dim": 5, "num_classes": 6, **kwargs})


def test_bad_calls_raise():
    loss = NBCSoftmaxLoss(embedding_dim=5, num_classes=6)
    with pytest.raises(ValueError, match="miner"):
        loss(_batch(), LABELS, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
    with pytest.raises(ValueError, match="num_classes"):
        loss(_batch(), LABELS + 1)
