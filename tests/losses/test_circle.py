"""Circle loss: value and gradient against PML and a float64 derivation, miners, a hand case, edges, errors."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.circle import CircleLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, reference, training_values)


def _batch(n: int = 12, d: int = 6, dtype: torch.dtype = torch.float64, seed: int = 5) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).requires_grad_()


def _assert_same_value_and_gradient(ours: torch.Tensor, reference: torch.Tensor, x: torch.Tensor) -> None:
    torch.testing.assert_close(ours, reference)
    torch.testing.assert_close(torch.autograd.grad(ours, x)[0], torch.autograd.grad(reference, x)[0])


def _circle(x: torch.Tensor, labels: torch.Tensor, m: float, gamma: float) -> float:
    """Sun et al. 2020, Eq. 4 with each sample as the anchor, averaged over anchors with both kinds of pair."""
    x = x.detach().double()
    x = x / x.norm(dim=1, keepdim=True)
    s, y = (x @ x.T).tolist(), labels.tolist()
    losses = []
    for i in range(len(y)):
        positives = [s[i][j] for j in range(len(y)) if j != i and y[j] == y[i]]
        negatives = [s[i][j] for j in range(len(y)) if y[j] != y[i]]
        if positives and negatives:
            push = sum(math.exp(gamma * max(sn + m, 0) * (sn - m)) for sn in negatives)
            pull = sum(math.exp(-gamma * max(1 + m - sp, 0) * (sp - (1 - m))) for sp in positives)
            losses.append(math.log1p(push * pull))
    return sum(losses) / len(losses)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("m", "gamma"), [(0.4, 80.0), (0.25, 256.0), (0.3, 10.0)])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_value_and_gradient_equal_pml(dtype, m, gamma, seed):
    x = _batch(dtype=dtype, seed=seed)
    _assert_same_value_and_gradient(CircleLoss(m, gamma)(x, LABELS),
                                    pml_losses.CircleLoss(m=m, gamma=gamma)(x, LABELS), x)


@pytest.mark.parametrize(("m", "gamma"), [(0.4, 80.0), (0.25, 256.0), (0.0, 4.0)])
def test_value_equals_float64_derivation(m, gamma):
    x = _batch()
    assert CircleLoss(m, gamma)(x, LABELS).item() == pytest.approx(_circle(x, LABELS, m, gamma), rel=1e-12)


@pytest.mark.parametrize("indices_tuple", [
    (torch.tensor([0, 3, 5]), torch.tensor([3, 8, 6]), torch.tensor([0, 0, 1, 2]), torch.tensor([1, 2, 0, 11])),
    (torch.tensor([0, 1, 2]), torch.tensor([8, 5, 10]), torch.tensor([4, 4, 9])),
])
def test_a_miners_tuple_replaces_the_batch_pairs_like_pml(indices_tuple):
    x = _batch()
    ours = CircleLoss()(x, LABELS, indices_tuple)
    _assert_same_value_and_gradient(ours, pml_losses.CircleLoss()(x, LABELS, indices_tuple), x)
    assert ours.item() != pytest.approx(CircleLoss()(x, LABELS).item())


@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(indices_tuple):
    x, r = _batch(), reference()
    ours = CircleLoss(0.3, 10.0)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    pml = pml_losses.CircleLoss(m=0.3, gamma=10.0)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert ours.item() > 0
    assert_same_value_and_gradients(ours, pml, (x, r))


def test_hand_computed_case_at_the_lower_bound():
    """Positives at cosine 1 and negatives at 0: every exponent is -gamma m^2, so l = softplus(-2 gamma m^2)."""
    x = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 1])  # anchor 2 has no positive and is left out of the mean
    assert CircleLoss()(x, labels).item() == pytest.approx(math.log1p(math.exp(-2 * 80 * 0.4 ** 2)), rel=1e-12)


def test_weights_are_constants_in_the_gradient():
    """a_p and a_n scale each pair's gradient but are not differentiated (the paper's analysis, its code, PML)."""
    x, m, gamma = _batch(), 0.4, 80.0

    def reference(weights_differentiated: bool) -> torch.Tensor:
        y = torch.nn.functional.normalize(x, dim=1)
        s = y @ y.T
        w = s if weights_differentiated else s.detach()
        total = []
        for i in range(len(LABELS)):
            same = LABELS == LABELS[i]
            pos, neg = same.clone(), ~same
            pos[i] = False
            if pos.any() and neg.any():
                pull = torch.logsumexp(-gamma * (1 + m - w[i, pos]).clamp(min=0) * (s[i, pos] - 1 + m), 0)
                push = torch.logsumexp(gamma * (w[i, neg] + m).clamp(min=0) * (s[i, neg] - m), 0)
                total.append(torch.nn.functional.softplus(pull + push))
        return torch.stack(total).mean()

    (ours,) = torch.autograd.grad(CircleLoss(m, gamma)(x, LABELS), x)
    torch.testing.assert_close(ours, torch.autograd.grad(reference(False), x)[0])
    assert not torch.allclose(ours, torch.autograd.grad(reference(True), x)[0])


def test_batches_without_positives_or_negatives_give_zero():
    x = _batch()
    for labels in (torch.full((12,), 3), torch.arange(12)):
        loss = CircleLoss()(x, labels)
        (gradient,) = torch.autograd.grad(loss, x)
        assert loss.item() == 0.0 and torch.equal(gradient, torch.zeros_like(x))


def test_all_equal_embeddings_give_a_finite_value_and_gradient():
    x = torch.ones(12, 6, requires_grad=True)
    loss = CircleLoss()(x, LABELS)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0 and torch.isfinite(x.grad).all()


def test_runs_in_float32_under_bfloat16_autocast():
    assert_full_precision_under_autocast(CircleLoss(), _batch(dtype=torch.float32), LABELS)


def test_training_a_few_steps_reduces_the_loss():
    values = training_values(CircleLoss())
    assert values[-1] < 0.8 * values[0]


def test_needs_the_global_batch():
    assert CircleLoss.needs_global_batch is True


def test_conforms_on_edge_batches():
    check_loss(CircleLoss)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"m": -0.1}, "m is the relaxation margin"), ({"m": 1.0}, "m is the relaxation margin"),
    ({"gamma": 0.0}, "gamma"),
])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CircleLoss(**kwargs)
