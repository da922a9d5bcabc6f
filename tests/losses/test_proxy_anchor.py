"""Proxy-Anchor: value and gradients against PML and a float64 derivation, a hand case, edges, errors, training."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.proxy_anchor import ProxyAnchorLoss

from .pair_batch import (CLASSES, LABELS, assert_full_precision_under_autocast, assert_proxies_stay_float32,
                         training_values)


def _batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _pair(dtype: torch.dtype = torch.float64, **kwargs: float) -> tuple[ProxyAnchorLoss, torch.nn.Module]:
    """Our loss and PML's with the same proxies."""
    ours = ProxyAnchorLoss(embedding_dim=6, num_classes=CLASSES, **kwargs).to(dtype)
    pml = pml_losses.ProxyAnchorLoss(num_classes=CLASSES, embedding_size=6, **kwargs).to(dtype)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml


def _proxy_anchor(x: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, alpha: float,
                  delta: float) -> float:
    """Kim et al. 2020, Eq. 4, term by term in float64."""
    x, proxies = x.detach().double(), proxies.detach().double()
    cos = [[float(xi @ p / (xi.norm() * p.norm())) for p in proxies] for xi in x]
    with_positives = sorted(set(labels.tolist()))
    pull = sum(math.log(1 + sum(math.exp(-alpha * (cos[i][c] - delta))
                                for i, y in enumerate(labels.tolist()) if y == c)) for c in with_positives)
    push = sum(math.log(1 + sum(math.exp(alpha * (cos[i][c] + delta))
                                for i, y in enumerate(labels.tolist()) if y != c)) for c in range(len(proxies)))
    return pull / len(with_positives) + push / len(proxies)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("alpha", "margin"), [(32.0, 0.1), (16.0, 0.3)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradients_equal_pml(dtype, alpha, margin, seed):
    torch.manual_seed(seed)
    ours, pml = _pair(dtype, alpha=alpha, margin=margin)
    x = _batch(dtype=dtype, seed=seed)
    value, reference = ours(x, LABELS), pml(x, LABELS)
    torch.testing.assert_close(value, reference)
    for got, expected in zip(torch.autograd.grad(value, [x, ours.proxies]),
                             torch.autograd.grad(reference, [x, pml.proxies])):
        torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(("alpha", "margin"), [(32.0, 0.1), (4.0, 0.0)])
def test_value_equals_float64_derivation(alpha, margin):
    loss = ProxyAnchorLoss(embedding_dim=6, num_classes=CLASSES, alpha=alpha, margin=margin).double()
    x = _batch()
    expected = _proxy_anchor(x, LABELS, loss.proxies, alpha, margin)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_case_divides_pulls_by_proxies_present_and_pushes_by_all():
    loss = ProxyAnchorLoss(embedding_dim=2, num_classes=3).double()
    loss.proxies.data = torch.tensor([[1.0, 0.0], [0.0, 3.0], [-2.0, 0.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 0.0], [0.0, 0.5]], dtype=torch.float64)  # cosines: rows (1, 0, -1) and (0, 1, 0)
    pull = math.log(1 + math.exp(-32 * 0.9))  # each present proxy's own sample at cosine 1
    push = math.log(1 + math.exp(32 * 0.1))  # proxies 0 and 1: the other sample at cosine 0
    push_absent = math.log(1 + math.exp(32 * -0.9) + math.exp(32 * 0.1))  # proxy 2: cosines -1 and 0
    expected = 2 * pull / 2 + (2 * push + push_absent) / 3
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-12)


def test_gradcheck():
    loss = ProxyAnchorLoss(embedding_dim=6, num_classes=CLASSES, alpha=4.0).double()
    proxies = loss.proxies.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torch.func.functional_call(loss, {"proxies": p}, (x, LABELS)),
                                    (_batch(), proxies))


def test_a_batch_of_one_class_pulls_its_proxy_and_pushes_all_others():
    torch.manual_seed(0)
    ours, pml = _pair()
    x, labels = _batch(), torch.full((12,), 3)
    value = ours(x, labels)
    torch.testing.assert_close(value, pml(x, labels))
    assert value.item() == pytest.approx(_proxy_anchor(x, labels, ours.proxies, 32.0, 0.1), rel=1e-12)
    value.backward()
    assert torch.isfinite(x.grad).all() and ours.proxies.grad[3].abs().sum() > 0


def test_proxies_start_kaiming_normal_fan_out_and_are_trained_in_their_dtype():
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(embedding_dim=512, num_classes=100)
    assert [p.shape for p in loss.parameters()] == [torch.Size([100, 512])]
    assert loss.proxies.std().item() == pytest.approx(math.sqrt(2 / 100), rel=0.02)
    assert_proxies_stay_float32(ProxyAnchorLoss(embedding_dim=6, num_classes=CLASSES), _batch(), LABELS)


def test_runs_in_float32_under_bfloat16_autocast():
    loss = ProxyAnchorLoss(embedding_dim=6, num_classes=CLASSES)
    assert_full_precision_under_autocast(loss, _batch(dtype=torch.float32), LABELS)


def test_training_a_few_steps_reduces_the_loss():
    values = training_values(ProxyAnchorLoss(embedding_dim=6, num_classes=8))
    assert values[-1] < 0.5 * values[0]


def test_needs_the_global_batch():
    assert ProxyAnchorLoss.needs_global_batch is True


def test_conforms_on_edge_batches():  # one class, one sample per class, all embeddings equal; miners refused
    check_loss(ProxyAnchorLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"alpha": 0.0}, "alpha"), ({"margin": -0.1}, "margin"), ({"margin": 1.0}, "margin"),
    ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ProxyAnchorLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_one_line_errors_naming_the_loss():
    loss = ProxyAnchorLoss(embedding_dim=6, num_classes=5)
    for labels in (LABELS + 1, LABELS - 1):
        with pytest.raises(ValueError, match=r"^proxy_anchor: labels must lie in \[0, 5\)[^\n]*$"):
            loss(_batch(), labels)
    with pytest.raises(ValueError, match="^proxy_anchor: embeddings .* set embedding_dim"):
        loss(_batch(d=7), LABELS)
    with pytest.raises(ValueError, match="^proxy_anchor: .*remove the miner"):
        loss(_batch(), LABELS % 5, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
