"""ProxyNCA / ProxyNCA++: value and gradients against PML and a float64 derivation, hand cases, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.proxy_nca import ProxyNCALoss

from .pair_batch import (CLASSES, LABELS, assert_full_precision_under_autocast, assert_proxies_stay_float32,
                         training_values)


def _batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _pair(temperature: float, dtype: torch.dtype = torch.float64) -> tuple[ProxyNCALoss, torch.nn.Module]:
    """Our loss and PML's (softmax_scale = 1/T) with the same proxies."""
    ours = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, temperature=temperature).to(dtype)
    pml = pml_losses.ProxyNCALoss(num_classes=CLASSES, embedding_size=6, softmax_scale=1 / temperature).to(dtype)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml


def _proxy_nca(x: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, temperature: float,
               positive_in_denominator: bool) -> float:
    """The batch mean of -log(exp(-d_y/T) / sum exp(-d_c/T)), squared distances of unit vectors, in float64."""
    x, proxies = x.detach().double(), proxies.detach().double()
    total = 0.0
    for xi, y in zip(x, labels.tolist()):
        d = [float(((xi / xi.norm() - p / p.norm()) ** 2).sum()) for p in proxies]
        below = [math.exp(-dc / temperature) for c, dc in enumerate(d) if positive_in_denominator or c != y]
        total += -math.log(math.exp(-d[y] / temperature) / sum(below))
    return total / len(x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("temperature", [1 / 9, 1.0, 0.05])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradients_equal_pml(dtype, temperature, seed):
    """In float32 the logits' 1/T scales the rounding of the two formulas' gradients: atol 1e-5/T."""
    torch.manual_seed(seed)
    ours, pml = _pair(temperature, dtype)
    x = _batch(dtype=dtype, seed=seed)
    value, reference = ours(x, LABELS), pml(x, LABELS)
    torch.testing.assert_close(value, reference)
    for got, expected in zip(torch.autograd.grad(value, [x, ours.proxies]),
                             torch.autograd.grad(reference, [x, pml.proxies])):
        if dtype == torch.float32:
            torch.testing.assert_close(got, expected, rtol=1.3e-6, atol=1e-5 / temperature)
        else:
            torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("positive_in_denominator", [True, False])
@pytest.mark.parametrize("temperature", [1 / 9, 1.0])
def test_value_equals_float64_derivation(positive_in_denominator, temperature):
    loss = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, temperature=temperature,
                        positive_in_denominator=positive_in_denominator).double()
    x = _batch()
    expected = _proxy_nca(x, LABELS, loss.proxies, temperature, positive_in_denominator)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_case_of_both_denominators():
    """x on its proxy (d = 0), the other proxy orthogonal (d = 2)."""
    plus_plus = ProxyNCALoss(embedding_dim=2, num_classes=2).double()
    original = ProxyNCALoss(embedding_dim=2, num_classes=2, temperature=1.0,
                            positive_in_denominator=False).double()
    x, labels = torch.tensor([[3.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    for loss in (plus_plus, original):
        loss.proxies.data = torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    assert plus_plus(x, labels).item() == pytest.approx(math.log(1 + math.exp(-2 * 9)), rel=1e-12)
    assert original(x, labels).item() == pytest.approx(-2.0, rel=1e-12)  # -log(e^0 / e^-2): negative


def test_positive_outside_the_denominator_differs_by_the_log_of_the_negatives_share():
    """-log(e_y / sum_{c != y} e_c) = -log(e_y / sum_c e_c) + log(1 - p_y), per sample."""
    plus_plus = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES).double()
    original = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, positive_in_denominator=False).double()
    original.proxies.data.copy_(plus_plus.proxies.data)
    x = _batch()
    for i in range(len(x)):
        one, label = x[i:i + 1], LABELS[i:i + 1]
        p_y = math.exp(-plus_plus(one, label).item())
        assert original(one, label).item() == pytest.approx(plus_plus(one, label).item() + math.log(1 - p_y),
                                                            rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("positive_in_denominator", [True, False])
def test_gradcheck(positive_in_denominator):
    loss = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, temperature=0.5,
                        positive_in_denominator=positive_in_denominator).double()
    proxies = loss.proxies.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torch.func.functional_call(loss, {"proxies": p}, (x, LABELS)),
                                    (_batch(), proxies))


def test_a_batch_of_one_class_equals_pml():
    torch.manual_seed(0)
    ours, pml = _pair(1 / 9)
    x, labels = _batch(), torch.full((12,), 3)
    value = ours(x, labels)
    torch.testing.assert_close(value, pml(x, labels))
    value.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ours.proxies.grad).all()


def test_proxies_start_as_in_proxynca_plus_plus_and_are_trained_in_their_dtype():
    torch.manual_seed(0)
    loss = ProxyNCALoss(embedding_dim=512, num_classes=100)
    assert [p.shape for p in loss.parameters()] == [torch.Size([100, 512])]
    assert loss.proxies.std().item() == pytest.approx(1 / 8, rel=0.02)
    assert_proxies_stay_float32(ProxyNCALoss(embedding_dim=6, num_classes=CLASSES), _batch(), LABELS)


@pytest.mark.parametrize("positive_in_denominator", [True, False])
def test_runs_in_float32_under_bfloat16_autocast(positive_in_denominator):
    loss = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES, positive_in_denominator=positive_in_denominator)
    assert_full_precision_under_autocast(loss, _batch(dtype=torch.float32), LABELS)


@pytest.mark.parametrize("positive_in_denominator", [True, False])
def test_training_a_few_steps_reduces_the_loss(positive_in_denominator):
    values = training_values(ProxyNCALoss(embedding_dim=6, num_classes=8,
                                          positive_in_denominator=positive_in_denominator))
    assert values[-1] < values[0] - 1.0


def test_is_per_sample_so_needs_no_global_batch():
    assert ProxyNCALoss.needs_global_batch is False
    loss, x = ProxyNCALoss(embedding_dim=6, num_classes=CLASSES).double(), _batch()
    halves = (loss(x[:6], LABELS[:6]) + loss(x[6:], LABELS[6:])) / 2
    torch.testing.assert_close(halves, loss(x, LABELS))


@pytest.mark.parametrize("params", [{}, {"positive_in_denominator": False, "temperature": 1.0}])
def test_conforms_on_edge_batches(params):  # one class, one sample per class, all embeddings equal; miners refused
    check_loss(ProxyNCALoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -1.0}, "temperature"),
    ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProxyNCALoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_one_line_errors_naming_the_loss():
    loss = ProxyNCALoss(embedding_dim=6, num_classes=5)
    for labels in (LABELS + 1, LABELS - 1):
        with pytest.raises(ValueError, match=r"^proxy_nca: labels must lie in \[0, 5\)[^\n]*$"):
            loss(_batch(), labels)
    with pytest.raises(ValueError, match="^proxy_nca: labels must have shape"):
        loss(_batch(), LABELS[:5])
    with pytest.raises(ValueError, match="^proxy_nca: .*remove the miner"):
        loss(_batch(), LABELS % 5, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
