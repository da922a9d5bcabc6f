"""FastAP: value and gradient against PML FastAPLoss (miner weights too), the paper's Eq. 9 with loops in float64,
hand-computed batches, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.fast_ap import FastAPLoss

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients, batch,
                         training_values)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("num_bins", [1, 3, 10, 40])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, num_bins, indices_tuple):
    x = batch(dtype=dtype)
    a = FastAPLoss(num_bins)(x, LABELS, indices_tuple)
    b = pml_losses.FastAPLoss(num_bins)(x, LABELS, indices_tuple)
    assert 0 < a.item() < 1 and a.dtype == dtype
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_larger_batch_equals_pml(seed):
    x = batch(96, 16, seed=seed)
    labels = torch.arange(96) % 12
    assert_same_value_and_gradients(FastAPLoss()(x, labels), pml_losses.FastAPLoss()(x, labels), (x,))


def _paper_reference(x: torch.Tensor, labels: list[int], num_bins: int) -> float:
    """Eq. 9 of Cakir et al. with loops in float64: squared distances of the normalised rows, triangular kernels on
    the centres 0, delta, ..., 4, then 1 - the mean over anchors with a positive of sum_b h+_b H+_b / H_b / N+."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    delta = 4 / num_bins
    aps = []
    for i, anchor in enumerate(rows):
        h_pos, h_neg = [0.0] * (num_bins + 1), [0.0] * (num_bins + 1)
        for j, other in enumerate(rows):
            if j == i:
                continue
            d = sum((p - q) ** 2 for p, q in zip(anchor, other))
            for b in range(num_bins + 1):
                kernel = max(0.0, 1 - abs(d - b * delta) / delta)
                (h_pos if labels[i] == labels[j] else h_neg)[b] += kernel
        n_pos = sum(labels[j] == labels[i] for j in range(len(rows)) if j != i)
        if n_pos == 0:
            continue
        ap, cum_pos, cum_all = 0.0, 0.0, 0.0
        for b in range(num_bins + 1):
            cum_pos += h_pos[b]
            cum_all += h_pos[b] + h_neg[b]
            if h_pos[b] * cum_pos > 0 and cum_all > 0:
                ap += h_pos[b] * cum_pos / cum_all
        aps.append(ap / n_pos)
    return 1 - sum(aps) / len(aps)


@pytest.mark.parametrize("num_bins", [1, 4, 10])
@pytest.mark.parametrize("seed", [7, 8])
def test_equals_the_papers_formula(num_bins, seed):
    x = batch(seed=seed)
    expected = _paper_reference(x.detach(), LABELS.tolist(), num_bins)
    assert FastAPLoss(num_bins)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_hand_computed_case():
    # anchor 0: its positive at d = 2, its negative at d = 4; anchor 1: both at d = 2 (a tie); x2 has no positive
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # 10 bins (delta 0.4): anchor 0 ranks perfectly (AP 1), the tie halves anchor 1's (AP 1/2)
    assert FastAPLoss(10)(x, labels).item() == pytest.approx(1 - (1 + 0.5) / 2)
    # 1 bin (centres 0 and 4): d = 2 splits half and half, d = 4 lies on 4. Anchor 0: h+ = (.5, .5), h- = (0, 1):
    # AP = .5 * .5 / .5 + .5 * 1 / 2 = .75; anchor 1: h+ = h- = (.5, .5): AP = .5 * .5 / 1 + .5 * 1 / 2 = .5
    assert FastAPLoss(1)(x, labels).item() == pytest.approx(1 - (0.75 + 0.5) / 2)


def test_positives_in_lower_bins_than_every_negative_give_zero():
    # two tight clusters on opposite sides of the circle: positives at d < 0.1, negatives at d > 3.9, so with
    # 10 bins (delta 0.4) positives fill centres 0 and 0.4 only, negatives 3.6 and 4 only: every AP is 1
    angles = torch.tensor([0.0, 0.05, 0.1, math.pi, math.pi + 0.07, math.pi - 0.04], dtype=torch.float64)
    x = torch.stack([angles.cos(), angles.sin()], dim=1).requires_grad_()
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    loss = FastAPLoss(10)(x, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    # with one bin (centres 0 and 4) every distance has mass on both, and the ranking no longer scores perfectly
    assert FastAPLoss(1)(x, labels).item() > 1e-3


def test_a_batch_of_one_writer_has_ap_one():
    x = batch()
    loss = FastAPLoss()(x, torch.zeros(12, dtype=torch.long))
    assert loss.item() == pytest.approx(0.0, abs=1e-12)


def test_a_batch_without_positives_gives_zero_with_a_gradient_path():
    x = batch()
    loss = FastAPLoss()(x, torch.arange(12))
    assert loss.item() == 0.0
    assert torch.autograd.grad(loss, x)[0].abs().sum() == 0


def test_collapsed_batch_equals_pml():
    x = torch.ones(8, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 3])
    ours = FastAPLoss()(x, labels)
    # every distance is 0: each anchor's AP is N+ / (B - 1), over the 7 anchors with a positive
    assert ours.item() == pytest.approx(1 - (3 * 2 / 7 + 4 * 1 / 7) / 7)
    assert_same_value_and_gradients(ours, pml_losses.FastAPLoss()(x, labels), (x,))


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: FastAPLoss(5)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(FastAPLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_a_few_steps_reduces_the_loss():
    values = training_values(FastAPLoss())
    assert values[-1] < 0.8 * values[0]


def test_needs_the_global_batch():
    assert FastAPLoss.needs_global_batch is True


@pytest.mark.parametrize("params", [{}, {"num_bins": 3}])
def test_contract(params):
    check_loss(FastAPLoss, params)


@pytest.mark.parametrize("num_bins", [0, -2, 2.5, True])
def test_invalid_num_bins_raise(num_bins):
    with pytest.raises(ValueError, match="fast_ap: num_bins"):
        FastAPLoss(num_bins)
