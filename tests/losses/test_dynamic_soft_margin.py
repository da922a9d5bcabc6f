"""Dynamic soft margin: value and gradient against PML DynamicSoftMarginLoss over consecutive calls (with tuples and a
reference set too), the paper's CDF weighting in float64, a hand-computed case, the histogram buffer, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.dynamic_soft_margin import DynamicSoftMarginLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

SETTINGS = [{}, {"min_val": -2.5, "num_bins": 7, "momentum": 0.3}]


class DetachedPML(pml_losses.DynamicSoftMarginLoss):
    """PML's loss with its histogram updated from detached values, as the official code does: PML's own keeps the
    histogram's graph, so its gradient also flows through the CDF and a second backward fails."""

    def update_histogram(self, data: torch.Tensor) -> None:
        super().update_histogram(data.detach())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml_over_consecutive_calls(dtype, settings, indices_tuple):
    ours, detached, pml = (DynamicSoftMarginLoss(**settings).to(dtype), DetachedPML(**settings),
                           pml_losses.DynamicSoftMarginLoss(**settings))
    for step in range(3):
        x = batch(dtype=dtype, seed=step)
        value = ours(x, LABELS, indices_tuple)
        assert value.dtype == dtype and value.item() != 0
        with torch.no_grad():
            torch.testing.assert_close(value, pml(x, LABELS, indices_tuple))
        assert_same_value_and_gradients(value, detached(x, LABELS, indices_tuple), (x,))
        torch.testing.assert_close(ours.histogram, detached.hist_)


@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(indices_tuple):
    ours, detached = DynamicSoftMarginLoss().double(), DetachedPML()
    for step in range(2):
        x, r = batch(seed=step), reference(seed=10 + step)
        value = ours(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
        expected = detached(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
        assert_same_value_and_gradients(value, expected, (x, r))


def _paper_reference(batches: list[list[list[float]]], labels: list[int], min_val: float, num_bins: int,
                     momentum: float) -> list[float]:
    """Zhang & Rusinkiewicz 2019 on every triplet of each batch in turn, in float64 with loops: v = d_ap - d_an,
    the running histogram of the v's linearly split onto the nodes min_val + kΔ, L = mean CDF(v) v."""
    delta = 2 * abs(min_val) / num_bins
    histogram, values = [0.0] * num_bins, []
    for x in batches:
        units = [[a / math.sqrt(sum(b * b for b in v)) for a in v] for v in x]
        dist = [[math.dist(u, w) for w in units] for u in units]
        gaps = [dist[a][p] - dist[a][n] for a in range(len(x)) for p in range(len(x)) for n in range(len(x))
                if p != a and labels[p] == labels[a] and labels[n] != labels[a]]
        fresh = [0.0] * num_bins
        for v in gaps:
            k, frac = int((v - min_val) // delta), (v - min_val) / delta - (v - min_val) // delta
            fresh[k] += 1 - frac
            fresh[min(k + 1, num_bins - 1)] += frac
        rate = momentum if any(histogram) else 1.0
        histogram = [(1 - rate) * h + rate * f for h, f in zip(histogram, fresh)]
        histogram = [h / sum(histogram) for h in histogram]
        cdf = [sum(histogram[:k + 1]) for k in range(num_bins)]
        values.append(sum(cdf[int((v - min_val) // delta)] * v for v in gaps) / len(gaps))
    return values


@pytest.mark.parametrize("settings", SETTINGS)
def test_equals_the_papers_weighting_over_consecutive_calls(settings):
    loss = DynamicSoftMarginLoss(**settings).double()
    batches = [batch(seed=s) for s in range(3)]
    expected = _paper_reference([x.tolist() for x in batches], LABELS.tolist(),
                                **{"min_val": -2.0, "num_bins": 10, "momentum": 0.01, **settings})
    assert [loss(x, LABELS).item() for x in batches] == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # x0, x1 (writer 0) at 0° and 90°, x2 (writer 1) at 180°: d01 = √2, d02 = 2, d12 = √2
    angles = torch.tensor([0.0, 90.0, 180.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [3.0], [0.5]], dtype=torch.float64)
    loss = DynamicSoftMarginLoss(min_val=-2.0, num_bins=4).double()  # nodes -2, -1, 0, 1 (Δ = 1)
    # triplets (0, 1, 2): √2 - 2 = -0.586 and (1, 0, 2): √2 - √2 = 0; the histogram (first call: all of it)
    v = math.sqrt(2) - 2
    histogram = torch.tensor([0.0, -v, 1 + v + 1, 0.0], dtype=torch.float64) / 2  # v between nodes -1 and 0
    expected = (histogram[:2].sum().item() * v + histogram[:3].sum().item() * 0.0) / 2
    assert loss(x, torch.tensor([0, 0, 1])).item() == pytest.approx(expected, abs=1e-15)
    torch.testing.assert_close(loss.histogram, histogram)


def test_the_histogram_is_a_buffer_in_the_state_dict_and_resumes():
    first = DynamicSoftMarginLoss(momentum=0.3)
    for step in range(2):
        first(batch(dtype=torch.float32, seed=step), LABELS)
    assert first.histogram.sum().item() == pytest.approx(1.0) and "histogram" in first.state_dict()
    resumed = DynamicSoftMarginLoss(momentum=0.3)
    resumed.load_state_dict(first.state_dict())
    x = batch(dtype=torch.float32, seed=5)
    torch.testing.assert_close(resumed(x, LABELS), first(x, LABELS))


def test_values_past_the_last_node_are_clamped_onto_it():
    # a positive at the far pole and a negative on the anchor: v = 2 - 0, where PML's index runs past its bins
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 1e-9]], dtype=torch.float64, requires_grad=True)
    loss = DynamicSoftMarginLoss().double()
    value = loss(x, torch.tensor([0, 0, 1]))
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(x.grad).all() and loss.histogram[-1] > 0


def test_no_triplet_gives_zero_and_leaves_the_histogram():
    loss = DynamicSoftMarginLoss()
    loss(batch(dtype=torch.float32), LABELS)
    before = loss.histogram.clone()
    for labels in (torch.zeros(12, dtype=torch.long), torch.arange(12)):  # one writer; one image per writer
        x = batch(dtype=torch.float32)
        value = loss(x, labels)
        value.backward()
        assert value.item() == 0.0 and torch.isfinite(x.grad).all()
        torch.testing.assert_close(loss.histogram, before)


def test_gradcheck():
    # the CDF is a constant weight: a first call sets the histogram, and at momentum 1e-12 gradcheck's calls, each
    # from that state, leave it (and the weights) practically unchanged
    loss = DynamicSoftMarginLoss(min_val=-2.5, num_bins=7, momentum=1e-12).double()
    loss(batch(seed=3), LABELS)
    state = loss.histogram.clone()

    def call(x: torch.Tensor) -> torch.Tensor:
        loss.histogram.copy_(state)
        return loss(x, LABELS)
    assert torch.autograd.gradcheck(call, (batch(),))


def test_full_precision_under_autocast():
    x = batch(dtype=torch.float32).detach()
    expected = DynamicSoftMarginLoss()(x, LABELS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(DynamicSoftMarginLoss()(x, LABELS), expected)
    assert_full_precision_under_autocast(DynamicSoftMarginLoss(momentum=1.0), x, LABELS)


def test_training_lowers_the_loss():
    values = training_values(DynamicSoftMarginLoss())
    assert values[-1] < values[0] - 0.1


def test_contract():
    check_loss(DynamicSoftMarginLoss, {})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"min_val": 0.0}, "min_val"), ({"num_bins": 0}, "num_bins"), ({"momentum": 0.0}, "momentum"),
    ({"momentum": 1.5}, "momentum")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^dynamic_soft_margin: {message}"):
        DynamicSoftMarginLoss(**kwargs)
