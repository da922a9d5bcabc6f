"""P2SGrad: value and gradients against PML P2SGradLoss and the paper's Eq. 11 in float64, a hand case, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.p2sgrad import P2SGradLoss

from .pair_batch import (CLASSES, LABELS, assert_full_precision_under_autocast, assert_proxies_stay_float32, batch,
                         training_values)


def _pair(dtype: torch.dtype = torch.float64) -> tuple[P2SGradLoss, torch.nn.Module]:
    """Our loss and PML's with the same class weights (PML's ``weight`` is our ``proxies`` transposed)."""
    ours = P2SGradLoss(embedding_dim=6, num_classes=CLASSES).to(dtype)
    pml = pml_losses.P2SGradLoss(descriptors_dim=6, num_classes=CLASSES).to(dtype)
    pml.weight.data.copy_(ours.proxies.data.T)
    return ours, pml


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_embedding_gradient_equal_pml_and_proxy_gradient_its_tangential_part(dtype, seed):
    torch.manual_seed(seed)
    ours, pml = _pair(dtype)
    x = batch(dtype=dtype, seed=seed)
    value, reference = ours(x, LABELS), pml(x, LABELS)
    assert value.dtype == dtype
    torch.testing.assert_close(value, reference)
    (gx, gw), (px, pw) = torch.autograd.grad(value, [x, ours.proxies]), torch.autograd.grad(reference, [x, pml.weight])
    torch.testing.assert_close(gx, px)
    # PML renormalises W outside autograd: its weight gradient keeps a radial part, the paper's (ours) does not
    w, pw = ours.proxies.detach(), pw.T
    torch.testing.assert_close(gw, pw - w * (w * pw).sum(1, keepdim=True))
    assert (w * gw).sum(1).abs().max() < 1e-6 < (w * pw).sum(1).abs().max()


def _paper_reference(x: list[list[float]], w: list[list[float]], labels: list[int]) -> tuple[float, list, list]:
    """Zhang et al. 2019: L = mean_ij (cos θ_ij - 1[j = y_i])^2 and its gradients, 2/(BC) times Eq. 11, with
    d cos θ / dx = (ŵ - cos θ x̂) / |x| and d cos θ / dw = (x̂ - cos θ ŵ) / |w|, in float64 with loops."""
    def unit(v):
        norm = math.sqrt(sum(a * a for a in v))
        return [a / norm for a in v], norm

    xs, ws = [unit(v) for v in x], [unit(v) for v in w]
    scale = 2 / (len(x) * len(w))
    value, gx = 0.0, [[0.0] * len(x[0]) for _ in x]
    gw = [[0.0] * len(x[0]) for _ in w]
    for i, (xh, xn) in enumerate(xs):
        for j, (wh, wn) in enumerate(ws):
            cos = sum(a * b for a, b in zip(xh, wh))
            residual = cos - (1.0 if labels[i] == j else 0.0)
            value += residual ** 2 / (len(x) * len(w))
            for d in range(len(xh)):
                gx[i][d] += scale * residual * (wh[d] - cos * xh[d]) / xn
                gw[j][d] += scale * residual * (xh[d] - cos * wh[d]) / wn
    return value, gx, gw


def test_value_and_gradients_equal_the_papers_eq11():
    loss = P2SGradLoss(embedding_dim=6, num_classes=CLASSES).double()
    loss.proxies.data.mul_(torch.linspace(0.5, 3.0, CLASSES, dtype=torch.float64)[:, None])  # lengths do not count
    x = batch()
    value = loss(x, LABELS)
    gx, gw = torch.autograd.grad(value, [x, loss.proxies])
    expected, ex, ew = _paper_reference(x.tolist(), loss.proxies.tolist(), LABELS.tolist())
    assert value.item() == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(gx, torch.tensor(ex, dtype=torch.float64), rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(gw, torch.tensor(ew, dtype=torch.float64), rtol=1e-10, atol=1e-14)


def test_hand_computed_case():
    loss = P2SGradLoss(embedding_dim=2, num_classes=2).double()
    loss.proxies.data = torch.tensor([[3.0, 0.0], [0.0, 0.5]], dtype=torch.float64)
    x = torch.tensor([[2.0, 0.0], [1.0, 1.0]], dtype=torch.float64)  # cosines (1, 0) and (1/√2, 1/√2)
    c = 1 / math.sqrt(2)
    expected = (0 + 0 + c ** 2 + (c - 1) ** 2) / 4  # sample 0 of class 0 is on its weight; sample 1 of class 1
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-12)


def test_weights_start_unit_length_uniform_directions():
    torch.manual_seed(0)
    loss = P2SGradLoss(embedding_dim=64, num_classes=100)
    assert [p.shape for p in loss.parameters()] == [torch.Size([100, 64])]
    torch.testing.assert_close(loss.proxies.norm(dim=1), torch.ones(100))
    assert_proxies_stay_float32(P2SGradLoss(embedding_dim=6, num_classes=CLASSES), batch(), LABELS)


def test_a_batch_of_one_writer_is_finite_and_equals_pml():
    torch.manual_seed(0)
    ours, pml = _pair()
    x, labels = batch(), torch.full((12,), 3)
    value = ours(x, labels)
    torch.testing.assert_close(value, pml(x, labels))
    value.backward()
    assert torch.isfinite(x.grad).all() and ours.proxies.grad.abs().sum() > 0


def test_gradcheck():
    loss = P2SGradLoss(embedding_dim=6, num_classes=CLASSES).double()
    proxies = loss.proxies.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torch.func.functional_call(loss, {"proxies": p}, (x, LABELS)),
                                    (batch(), proxies))


def test_full_precision_under_autocast():
    loss = P2SGradLoss(embedding_dim=6, num_classes=CLASSES)
    assert_full_precision_under_autocast(loss, batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(P2SGradLoss(embedding_dim=6, num_classes=8))
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(P2SGradLoss)


@pytest.mark.parametrize(("kwargs", "message"), [({"num_classes": 1}, "num_classes"),
                                                  ({"embedding_dim": 0}, "embedding_dim")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^p2sgrad: {message}"):
        P2SGradLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_one_line_errors_naming_the_loss():
    loss = P2SGradLoss(embedding_dim=6, num_classes=5)
    with pytest.raises(ValueError, match=r"^p2sgrad: labels must lie in \[0, 5\)"):
        loss(batch(), LABELS + 1)
    with pytest.raises(ValueError, match="^p2sgrad: .*remove the miner"):
        loss(batch(), LABELS % 5, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
