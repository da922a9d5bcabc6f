"""SoftTriple: value and gradients against PML and a float64 derivation, hand cases, the regulariser, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.soft_triple import SoftTripleLoss

from .pair_batch import (CLASSES, LABELS, assert_full_precision_under_autocast, assert_proxies_stay_float32,
                         training_values)

SETTINGS = [{}, {"centers_per_class": 3, "la": 10.0, "gamma": 0.5, "margin": 0.2},
            {"centers_per_class": 1, "margin": 0.1}]


def _batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _pair(dtype: torch.dtype = torch.float64, **kwargs: float) -> tuple[SoftTripleLoss, torch.nn.Module]:
    """Our loss and PML's with the same centres (PML's ``fc`` is our ``proxies`` transposed)."""
    ours = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES, **kwargs).to(dtype)
    pml = pml_losses.SoftTripleLoss(num_classes=CLASSES, embedding_size=6, **{
        k: v for k, v in kwargs.items() if k != "tau"}).to(dtype)
    pml.fc.data.copy_(ours.proxies.data.T)
    return ours, pml


def _spread(proxies: torch.Tensor, classes: int, k: int) -> torch.Tensor:
    """Qian et al. 2019's R, pair by pair: sum_c sum_{s<t} sqrt(2 + 1e-5 - 2 w_s.w_t) / (C K (K-1))."""
    total = proxies.new_zeros(())
    for c in range(classes):
        w = [proxies[c * k + s] / proxies[c * k + s].norm() for s in range(k)]
        for s in range(k):
            for t in range(s + 1, k):
                total = total + torch.sqrt(2 + 1e-5 - 2 * (w[s] @ w[t]))
    return total / (classes * k * (k - 1)) if k > 1 else total


def _soft_triple(x: torch.Tensor, labels: torch.Tensor, proxies: torch.Tensor, k: int, la: float,
                 gamma: float, margin: float, tau: float) -> float:
    """Qian et al. 2019, Eqs. 7-8 and the regulariser, term by term in float64."""
    x, proxies = x.detach().double(), proxies.detach().double()
    classes = len(proxies) // k
    total = 0.0
    for xi, y in zip(x, labels.tolist()):
        relaxed = []
        for c in range(classes):
            s = [float(xi @ proxies[c * k + j] / (xi.norm() * proxies[c * k + j].norm())) for j in range(k)]
            weights = [math.exp(v / gamma) for v in s]
            relaxed.append(sum(w * v for w, v in zip(weights, s)) / sum(weights))
        target = math.exp(la * (relaxed[y] - margin))
        total += -math.log(target / (target + sum(math.exp(la * v) for c, v in enumerate(relaxed) if c != y)))
    return total / len(x) + tau * float(_spread(proxies, classes, k))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_without_regulariser_value_and_gradients_equal_pml(dtype, settings, seed):
    torch.manual_seed(seed)
    ours, pml = _pair(dtype, tau=0.0, **settings)
    x = _batch(dtype=dtype, seed=seed)
    value, reference = ours(x, LABELS), pml(x, LABELS)
    torch.testing.assert_close(value, reference)
    got = torch.autograd.grad(value, [x, ours.proxies])
    expected = torch.autograd.grad(reference, [x, pml.fc])
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1].T)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS[:2])
def test_with_regulariser_equals_pml_plus_tau_r(dtype, settings):
    """PML has no R: ours = PML + tau * R (R written pair by pair), value and gradients."""
    torch.manual_seed(0)
    ours, pml = _pair(dtype, **settings)
    x, k = _batch(dtype=dtype), ours.centers_per_class
    value = ours(x, LABELS)
    reference = pml(x, LABELS) + 0.2 * _spread(pml.fc.T, CLASSES, k)
    torch.testing.assert_close(value, reference)
    got = torch.autograd.grad(value, [x, ours.proxies])
    expected = torch.autograd.grad(reference, [x, pml.fc])
    torch.testing.assert_close(got[0], expected[0])
    torch.testing.assert_close(got[1], expected[1].T)


@pytest.mark.parametrize("settings", [*SETTINGS, {"centers_per_class": 4, "tau": 1.5, "gamma": 0.05}])
def test_value_equals_float64_derivation(settings):
    torch.manual_seed(0)
    loss = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES, **settings).double()
    x = _batch()
    expected = _soft_triple(x, LABELS, loss.proxies, loss.centers_per_class, loss.la, loss.gamma,
                            loss.margin, loss.tau)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_one_centre_per_class_is_the_normalised_softmax_with_margin():
    """K = 1: S'_c is the cosine itself; x on its centre (cos 1), the other centre orthogonal (cos 0)."""
    loss = SoftTripleLoss(embedding_dim=2, num_classes=2, centers_per_class=1).double()
    loss.proxies.data = torch.tensor([[0.5, 0.0], [0.0, 2.0]], dtype=torch.float64)
    x = torch.tensor([[3.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    expected = math.log(1 + math.exp(-20 * (1 - 0.01)))  # -log(e^{la(1-d)} / (e^{la(1-d)} + e^0)), both samples
    assert loss(x, torch.tensor([0, 1])).item() == pytest.approx(expected, rel=1e-12)
    assert loss(x, torch.tensor([1, 0])).item() == pytest.approx(math.log(1 + math.exp(20 * (1 + 0.01))),
                                                                 rel=1e-12)


def test_hand_computed_case_with_two_centres_and_the_regulariser():
    """Class 0: centres e1, e2 (90 degrees apart); class 1: e1 and -e1 (opposite). x = e1, label 0."""
    loss = SoftTripleLoss(embedding_dim=2, num_classes=2, centers_per_class=2, gamma=0.5, margin=0.1,
                          tau=0.3).double()
    loss.proxies.data = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-3.0, 0.0]], dtype=torch.float64)
    x, labels = torch.tensor([[5.0, 0.0]], dtype=torch.float64), torch.tensor([0])
    own = math.exp(1 / 0.5) / (math.exp(1 / 0.5) + 1)  # softmax weight of cosine 1 against cosine 0
    other = (math.exp(2) - math.exp(-2)) / (math.exp(2) + math.exp(-2))  # cosines 1 and -1
    softmax = -math.log(1 / (1 + math.exp(20 * (other - (own - 0.1)))))
    spread = (math.sqrt(2 + 1e-5) + math.sqrt(4 + 1e-5)) / (2 * 2 * 1)
    assert loss(x, labels).item() == pytest.approx(softmax + 0.3 * spread, rel=1e-12)
    assert loss.terms()["softmax"].item() == pytest.approx(softmax, rel=1e-12)
    assert loss.terms()["regulariser"].item() == pytest.approx(spread, rel=1e-12)


def test_the_regulariser_is_tau_times_r_and_pulls_each_class_centres_together():
    torch.manual_seed(0)
    with_r = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES, centers_per_class=4, tau=0.7).double()
    without = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES, centers_per_class=4, tau=0.0).double()
    without.proxies.data.copy_(with_r.proxies.data)
    x = _batch()
    value, plain = with_r(x, LABELS), without(x, LABELS)
    assert (value - plain).item() == pytest.approx(0.7 * float(_spread(with_r.proxies.detach(), CLASSES, 4)), rel=1e-12)
    assert "regulariser" not in without.terms()
    grad = torch.autograd.grad(value, with_r.proxies)[0] - torch.autograd.grad(plain, without.proxies)[0]
    centres = with_r.proxies.detach() - 1e-3 * grad  # a small step down tau * R alone
    assert float(_spread(centres, CLASSES, 4)) < float(_spread(with_r.proxies.detach(), CLASSES, 4))
    merged = with_r.proxies.detach().view(CLASSES, 4, 6)[:, :1].expand(CLASSES, 4, 6).reshape(-1, 6)
    assert float(_spread(merged, CLASSES, 4)) == pytest.approx(math.sqrt(1e-5) * 6 / 12, rel=1e-9)


def test_gradcheck():
    loss = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES, centers_per_class=3, la=4.0, gamma=0.5).double()
    proxies = loss.proxies.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, p: torch.func.functional_call(loss, {"proxies": p}, (x, LABELS)),
                                    (_batch(), proxies))


def test_centres_start_as_in_the_official_code_and_are_trained_in_their_dtype():
    torch.manual_seed(0)
    loss = SoftTripleLoss(embedding_dim=512, num_classes=100)
    assert [p.shape for p in loss.parameters()] == [torch.Size([1000, 512])]
    bound = 1 / math.sqrt(1000)
    assert loss.proxies.abs().max().item() <= bound
    assert loss.proxies.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
    assert_proxies_stay_float32(SoftTripleLoss(embedding_dim=6, num_classes=CLASSES), _batch(), LABELS)


def test_runs_in_float32_under_bfloat16_autocast():
    loss = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES)
    assert_full_precision_under_autocast(loss, _batch(dtype=torch.float32), LABELS)


def test_training_a_few_steps_reduces_the_loss():
    values = training_values(SoftTripleLoss(embedding_dim=6, num_classes=8))
    assert values[-1] < 0.5 * values[0]


def test_is_per_sample_plus_a_centre_term_so_needs_no_global_batch():
    assert SoftTripleLoss.needs_global_batch is False
    loss, x = SoftTripleLoss(embedding_dim=6, num_classes=CLASSES).double(), _batch()
    halves = (loss(x[:6], LABELS[:6]) + loss(x[6:], LABELS[6:])) / 2
    torch.testing.assert_close(halves, loss(x, LABELS))


@pytest.mark.parametrize("params", [{}, {"centers_per_class": 1}, {"tau": 0.0}])
def test_conforms_on_edge_batches(params):  # one class, one sample per class, all embeddings equal; miners refused
    check_loss(SoftTripleLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"centers_per_class": 0}, "centers_per_class"), ({"la": 0.0}, "la"), ({"gamma": 0.0}, "gamma"),
    ({"gamma": -0.1}, "gamma"), ({"margin": -0.1}, "margin"), ({"margin": 1.0}, "margin"),
    ({"tau": -0.2}, "tau"), ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftTripleLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_one_line_errors_naming_the_loss():
    loss = SoftTripleLoss(embedding_dim=6, num_classes=5, centers_per_class=3)
    for labels in (LABELS + 1, LABELS - 1):
        with pytest.raises(ValueError, match=r"^soft_triple: labels must lie in \[0, 5\)[^\n]*$"):
            loss(_batch(), labels)
    with pytest.raises(ValueError, match=r"^soft_triple: embeddings must have shape \(batch, 6\)[^\n]*$"):
        loss(_batch(d=7), LABELS % 5)
    with pytest.raises(ValueError, match="^soft_triple: labels must have shape"):
        loss(_batch(), LABELS[:5])
    with pytest.raises(ValueError, match=r"^soft_triple: [^\n]*remove the miner$"):
        loss(_batch(), LABELS % 5, (torch.tensor([0]), torch.tensor([3]), torch.tensor([1])))
