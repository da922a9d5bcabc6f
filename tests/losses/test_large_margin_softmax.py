"""L-Softmax: value and gradients (embeddings and class weights) against PML LargeMarginSoftmaxLoss, with and
without a miner's tuples; the paper's formula (with the official lambda annealing) in float64, hand-computed cases,
the schedule, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.large_margin_softmax import LargeMarginSoftmaxLoss
from hvkit_plugins.losses.sphereface import SphereFaceLoss

from .pair_batch import (CLASSES, LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_classifier_as_pml,
                         batch, training_values)

# PML's LargeMarginSoftmaxLoss calls scipy.special.binom on tensors
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
ANNEALED = {"base": 1000.0, "gamma": 0.12, "power": 1.0, "lambda_min": 5.0}  # SphereFace's: lambda 5 by step 1,700


def _pair(margin: int, scale: float = 1.0, dtype: torch.dtype = torch.float64,
          ) -> tuple[LargeMarginSoftmaxLoss, torch.nn.Module]:
    """Our loss and PML's with the same class weights (PML's W is our weight transposed)."""
    ours = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, margin=margin, scale=scale).to(dtype)
    pml = pml_losses.LargeMarginSoftmaxLoss(num_classes=CLASSES, embedding_size=6, margin=margin,
                                            scale=scale).to(dtype)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml


def _paper_reference(x: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, m: int, scale: float = 1.0,
                     lam: float = 0.0) -> float:
    """Liu et al. 2016, Eqs. 4-6, in float64 with loops: target logit |w_y||x| psi(theta_y) with
    psi = (-1)^k cos(m theta) - 2k on [k pi/m, (k+1) pi/m], as (lam |w||x| cos + |w||x| psi)/(1 + lam) when annealed;
    others |w_j||x| cos(theta_j); batch mean of the cross-entropy."""
    rows, w = x.detach().double().tolist(), weight.detach().double().tolist()
    total = 0.0
    for xi, y in zip(rows, labels.tolist()):
        norm_x = math.sqrt(sum(a * a for a in xi))
        logits = []
        for j, wj in enumerate(w):
            norm_w = math.sqrt(sum(a * a for a in wj))
            cos = sum(a * b for a, b in zip(xi, wj)) / (norm_x * norm_w)
            if j == y:
                theta = math.acos(cos)
                k = math.floor(theta * m / math.pi)
                cos = (lam * cos + (-1) ** k * math.cos(m * theta) - 2 * k) / (1 + lam)
            logits.append(scale * norm_w * norm_x * cos)
        top = max(logits)
        total += top + math.log(sum(math.exp(v - top) for v in logits)) - logits[y]
    return total / len(rows)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("margin", [1, 2, 3, 4])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradients_equal_pml(dtype, margin, indices_tuple):
    torch.manual_seed(margin)
    ours, pml = _pair(margin, dtype=dtype)
    value = assert_same_classifier_as_pml(ours, pml, batch(dtype=dtype), LABELS, indices_tuple)
    assert value.dtype == dtype and value.item() > 0


@pytest.mark.parametrize("scale", [0.5, 4.0])
def test_scale_equals_pml(scale):
    torch.manual_seed(0)
    ours, pml = _pair(4, scale)
    assert_same_classifier_as_pml(ours, pml, batch(), LABELS)


@pytest.mark.parametrize("margin", [1, 2, 3, 4])
@pytest.mark.parametrize("scale", [1.0, 0.5])
def test_equals_the_papers_formula(margin, scale):
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, margin=margin, scale=scale).double()
    x = batch(seed=margin)
    expected = _paper_reference(x, LABELS, loss.weight, margin, scale)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("iteration", [1, 50, 10_000])
def test_annealed_value_equals_the_papers_formula(iteration):
    """With base > 0 the loss departs from PML's: the target logit is (lam |w||x| cos + |w||x| psi) / (1 + lam)."""
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, **ANNEALED).double().eval()
    loss.iteration.fill_(iteration)
    lam = max(5.0, 1000.0 / (1 + 0.12 * iteration))
    x = batch()
    value = loss(x, LABELS)
    assert value.item() == pytest.approx(_paper_reference(x, LABELS, loss.weight, 4, lam=lam), rel=1e-10)
    assert value.item() != pytest.approx(_paper_reference(x, LABELS, loss.weight, 4), rel=1e-3)


def test_hand_computed_cases():
    # |x| = 2; w_0 of length 1.5 at 60 degrees from x, w_1 of length 1 orthogonal to it; m = 2
    loss = LargeMarginSoftmaxLoss(embedding_dim=2, num_classes=2, margin=2).double()
    loss.weight.data = torch.tensor([[0.75, 0.75 * math.sqrt(3)], [0.0, -1.0]], dtype=torch.float64)
    x = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    # theta 60 degrees: k = 0, psi = cos(120 degrees) = -1/2, target logit 1.5 * 2 * -1/2 = -1.5; other logit 0
    assert loss(x, torch.tensor([0])).item() == pytest.approx(math.log1p(math.exp(1.5)), rel=1e-12)
    # w_0 at 120 degrees: k = 1, psi = -cos(240 degrees) - 2 = -3/2, target logit -4.5
    loss.weight.data[0, 0] = -0.75
    assert loss(x, torch.tensor([0])).item() == pytest.approx(math.log1p(math.exp(4.5)), rel=1e-12)
    # as target, w_1 (90 degrees: k = 1, psi = -cos(180 degrees) - 2 = -1) against w_0 at cos -1/2: logit -1.5
    assert loss(x, torch.tensor([1])).item() == pytest.approx(math.log1p(math.exp(-1.5 + 2.0)), rel=1e-12)


def test_psi_is_continuous_and_decreasing_in_the_angle():
    """psi(theta) = (-1)^k cos(m theta) - 2k joins up at each k pi/m, so the loss rises as x turns away from w_y."""
    loss = LargeMarginSoftmaxLoss(embedding_dim=2, num_classes=2).double()
    loss.weight.data = torch.tensor([[1.0, 0.0], [0.0, 0.0]], dtype=torch.float64)  # the other logit is 0
    angles = torch.linspace(0.0, math.pi, 721, dtype=torch.float64)
    values = [loss(torch.stack([a.cos(), a.sin()])[None], torch.tensor([0])).item() for a in angles]
    steps = torch.tensor(values).diff()  # log(1 + exp(-psi)): psi's steps are at most m pi / 720 < 0.02
    assert (steps > 0).all() and steps.max() < 0.02
    assert values[-1] == pytest.approx(math.log1p(math.exp(7.0)), rel=1e-9)  # psi(pi) = -1 - 2 * 3


def test_unit_weights_give_sphereface_without_annealing():
    """SphereFace (A-Softmax) is L-Softmax with the class weights normalised; both use the shared logits."""
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES).double()
    sphereface = SphereFaceLoss(embedding_dim=6, num_classes=CLASSES, base=0.0, lambda_min=0.0).double()
    sphereface.weight.data.copy_(loss.weight.data)
    loss.weight.data = torch.nn.functional.normalize(loss.weight.data, dim=1)
    x = batch()
    torch.testing.assert_close(loss(x, LABELS, TUPLES[0]), sphereface(x, LABELS, TUPLES[0]))


def test_lambda_follows_the_official_schedule_in_training_only():
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES)
    assert loss.current_lambda().item() == 0.0  # base 0: no annealing, PML's loss
    loss(batch(), LABELS)
    assert loss.current_lambda().item() == 0.0 and int(loss.iteration) == 1
    annealed = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, base=1000.0)  # the official defaults
    for step in range(1, 4):
        annealed(batch(), LABELS)
        # float32 weights: (1 + gamma i) ** -35 loses 35 times float32's rounding
        assert annealed.current_lambda().item() == pytest.approx(1000.0 * (1 + 2.5e-5 * step) ** -35.0, rel=1e-5)
    annealed.eval()
    annealed(batch(), LABELS)
    assert int(annealed.iteration) == 3
    resumed = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, base=1000.0)
    resumed.load_state_dict(annealed.state_dict())
    assert int(resumed.iteration) == 3


def test_a_batch_of_one_writer_equals_pml_with_finite_gradients():
    torch.manual_seed(1)
    ours, pml = _pair(4)
    x = batch()
    value = assert_same_classifier_as_pml(ours, pml, x, torch.full((12,), 3))
    value.backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(ours.weight.grad).all()


def test_an_empty_miner_output_weighs_every_sample_as_pml_does():
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES).double()
    x, empty = batch(), (torch.tensor([], dtype=torch.long),) * 4
    torch.testing.assert_close(loss(x, LABELS, empty), loss(x, LABELS))


@pytest.mark.parametrize("params", [{}, ANNEALED])
def test_gradcheck(params):
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, **params).double().eval()
    loss.iteration.fill_(20)
    weight = loss.weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(
        lambda x, w: torch.func.functional_call(loss, {"weight": w}, (x, LABELS, TUPLES[0])), (batch(), weight))


def test_weights_start_as_in_the_official_code_stay_float32_and_receive_gradients():
    torch.manual_seed(0)
    assert LargeMarginSoftmaxLoss(embedding_dim=512, num_classes=100).weight.std().item() == pytest.approx(
        math.sqrt(2 / 512), rel=0.02)
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES)
    assert [p.shape for p in loss.parameters()] == [torch.Size([CLASSES, 6])]
    value = loss(batch(), LABELS)  # float64 embeddings are cast to the weights' float32
    value.backward()
    assert value.dtype == loss.weight.dtype == torch.float32 and loss.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("params", [{}, ANNEALED])
def test_full_precision_under_autocast(params):
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=CLASSES, **params).eval()
    assert_full_precision_under_autocast(loss, batch(dtype=torch.float32).detach(), LABELS)


@pytest.mark.parametrize("params", [{}, ANNEALED])
def test_training_lowers_the_loss(params):
    values = training_values(LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=8, **params))
    assert values[-1] < 0.5 * values[0]


def test_contract():  # one class, one sample per class, all embeddings equal, both miner formats
    check_loss(LargeMarginSoftmaxLoss)
    check_loss(LargeMarginSoftmaxLoss, {"margin": 2, "scale": 2.0, **ANNEALED})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"margin": 0}, "margin"), ({"margin": 2.5}, "margin"), ({"margin": True}, "margin"), ({"scale": 0.0}, "scale"),
    ({"base": -1.0}, "base"), ({"gamma": -1.0}, "base"), ({"lambda_min": -1.0}, "base"),
    ({"num_classes": 1}, "num_classes"), ({"embedding_dim": 0}, "embedding_dim")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^large_margin_softmax: {message}[^\n]*$"):
        LargeMarginSoftmaxLoss(**{"embedding_dim": 6, "num_classes": CLASSES, **kwargs})


def test_bad_batches_raise_errors_naming_the_loss():
    loss = LargeMarginSoftmaxLoss(embedding_dim=6, num_classes=5)
    with pytest.raises(ValueError, match=r"^large_margin_softmax: labels must lie in \[0, 5\)"):
        loss(batch(), LABELS + 1)
