"""NormSoftmax: value and gradients (embeddings and class weights) against PML NormalizedSoftmaxLoss, with and
without a miner's tuples, the paper's formula in float64, a hand-computed case, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.normalized_softmax import NormalizedSoftmaxLoss
from hvkit_plugins.losses.proxy_nca import ProxyNCALoss

from .pair_batch import (CLASSES, LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_classifier_as_pml,
                         batch, training_values)


def _pair(temperature: float, dtype: torch.dtype = torch.float64) -> tuple[NormalizedSoftmaxLoss, torch.nn.Module]:
    """Our loss and PML's with the same class weights (PML's W is our weight transposed)."""
    ours = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, temperature=temperature).to(dtype)
    pml = pml_losses.NormalizedSoftmaxLoss(num_classes=CLASSES, embedding_size=6, temperature=temperature).to(dtype)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml


def _paper_reference(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, temperature: float,
                     sample_weights: list[float] | None = None) -> float:
    """Zhai & Wu's Eq. 1 in float64 with loops: -log(exp(cos(x, w_y)/T) / sum_c exp(cos(x, w_c)/T)), batch mean."""
    rows, w = x.detach().double().tolist(), weight.detach().double().tolist()

    def cosine(u: list[float], v: list[float]) -> float:
        return sum(a * b for a, b in zip(u, v)) / math.sqrt(sum(a * a for a in u) * sum(b * b for b in v))

    total = 0.0
    for i, (xi, y) in enumerate(zip(rows, labels.tolist())):
        logits = [cosine(xi, wc) / temperature for wc in w]
        top = max(logits)
        term = top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y]
        total += term * (1.0 if sample_weights is None else sample_weights[i])
    return total / len(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [0.05, 0.5])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradients_equal_pml(dtype, temperature, indices_tuple):
    torch.manual_seed(0)
    ours, pml = _pair(temperature, dtype)
    value = assert_same_classifier_as_pml(ours, pml, batch(dtype=dtype), LABELS, indices_tuple)
    assert value.dtype == dtype and value.item() > 0


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_equals_the_papers_formula(temperature):
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, temperature=temperature).double()
    x = batch()
    expected = _paper_reference(x, LABELS, loss.weight, temperature)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_a_miner_weights_each_sample_by_how_often_it_is_mined():
    """PML's rule: weight = count / max count, 0 for samples no tuple names; the mean stays over the batch."""
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES).double()
    x, triplets = batch(), TUPLES[0]
    counts = torch.bincount(torch.cat(triplets), minlength=len(LABELS)).double()
    expected = _paper_reference(x, LABELS, loss.weight, 0.05, (counts / counts.max()).tolist())
    assert loss(x, LABELS, triplets).item() == pytest.approx(expected, rel=1e-12)
    empty = (torch.tensor([], dtype=torch.long),) * 3  # no tuples at all: PML weighs every sample 1
    torch.testing.assert_close(loss(x, LABELS, empty), loss(x, LABELS))


def test_hand_computed_case():
    # x along w_0 (cos 1), orthogonal to w_1 (cos 0), opposite w_2 (cos -1); T = 0.5: logits 2, 0, -2
    loss = NormalizedSoftmaxLoss(embedding_dim=2, num_classes=3, temperature=0.5).double()
    loss.weight.data = torch.tensor([[3.0, 0.0], [0.0, 0.2], [-1.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[0.5, 0.0], [0.0, 4.0]], dtype=torch.float64)
    first = math.log(1 + math.exp(-2) + math.exp(-4))  # label 0: its class at logit 2
    second = 2 - 0 + math.log(1 + math.exp(-2) + math.exp(-2))  # label 2, at cos 0 from x_1: logits 0, 2, 0
    assert loss(x, torch.tensor([0, 2])).item() == pytest.approx((first + second) / 2, rel=1e-12)


def test_equals_proxy_nca_plus_plus_at_twice_the_temperature():
    """-(2 - 2 cos) / (2T) = cos / T - 1 / T: the constant cancels in the softmax."""
    ours = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, temperature=0.05).double()
    proxy_nca = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, temperature=0.1).double()
    proxy_nca.proxies.data.copy_(ours.weight.data)
    x = batch()
    torch.testing.assert_close(ours(x, LABELS), proxy_nca(x, LABELS))


def test_a_batch_of_one_writer_equals_pml_with_finite_gradients():
    torch.manual_seed(1)
    ours, pml = _pair(0.05)
    x = batch()
    value = assert_same_classifier_as_pml(ours, pml, x, torch.full((12,), 3))
    value.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ours.weight.grad).all()


def test_only_directions_count():
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES).double()
    x = batch()
    value = loss(x, LABELS)
    loss.weight.data *= torch.rand(CLASSES, 1, dtype=torch.float64) + 0.5
    torch.testing.assert_close(loss(x * 3.0, LABELS), value)


def test_gradcheck():
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, temperature=0.5).double()
    weight = loss.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w: torch.func.functional_call(loss, {"weight": w}, (x, LABELS, TUPLES[1])), (batch(), weight))


def test_weights_stay_float32_and_receive_gradients():
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES)
    assert [p.shape for p in loss.parameters()] == [torch.Size([CLASSES, 6])]
    value = loss(batch(), LABELS)  # float64 embeddings are cast to the weights' float32
    value.backward()
    assert value.dtype == loss.weight.dtype == torch.float32 and loss.weight.grad.abs().sum() > 0


def test_full_precision_under_autocast():
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES)
    assert_full_precision_under_autocast(loss, batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(NormalizedSoftmaxLoss(embedding_dim=6, num_classes=8))
    assert values[-1] < 0.5 * values[0]


def test_is_per_sample_so_needs_no_global_batch():
    assert NormalizedSoftmaxLoss.needs_global_batch is False
    loss, x = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=CLASSES).double(), batch()
    torch.testing.assert_close((loss(x[:6], LABELS[:6]) + loss(x[6:], LABELS[6:])) / 2, loss(x, LABELS))


def test_contract():  # one class, one sample per class, all embeddings equal, both miner formats
    check_loss(NormalizedSoftmaxLoss)
    check_loss(NormalizedSoftmaxLoss, {"temperature": 1.0})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -0.05}, "temperature"),
    ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^normalized_softmax: {message}[^\n]*$"):
        NormalizedSoftmaxLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_errors_naming_the_loss():
    loss = NormalizedSoftmaxLoss(embedding_dim=6, num_classes=5)
    with pytest.raises(ValueError, match=r"^normalized_softmax: labels must lie in \[0, 5\)"):
        loss(batch(), LABELS + 1)
    with pytest.raises(ValueError, match="^normalized_softmax: embeddings must have shape"):
        loss(batch(d=5), LABELS % 5)
