"""Histogram loss: value and gradient against PML HistogramLoss (miner triplets and pairs too), the paper's
Eqs. 2-4 with loops in float64, hand-computed cases, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses, miners as pml_miners

from hvkit.testing import check_loss
from hvkit_plugins.losses.histogram import HistogramLoss

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients, batch,
                         training_values)

# Powers of two: PML places its nodes r * Δ in float32 even for float64 input, exactly only when Δ is a power of 2
EXACT_BINS = [1, 4, 64, 128]


def _pml(n_bins: int) -> pml_losses.HistogramLoss:
    return pml_losses.HistogramLoss(n_bins=n_bins)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_bins", EXACT_BINS)
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, n_bins, indices_tuple):
    x = batch(dtype=dtype)
    a = HistogramLoss(n_bins)(x, LABELS, indices_tuple)
    b = _pml(n_bins)(x, LABELS, indices_tuple)
    assert a.dtype == dtype
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("n_bins", [100, 10, 3])
def test_float32_equals_pml_at_any_bins(n_bins):
    x = batch(dtype=torch.float32)
    a, b = HistogramLoss(n_bins)(x, LABELS), _pml(n_bins)(x, LABELS)
    assert 0 < a.item() < 1
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("n_bins", [100, 10])
def test_float64_at_other_bins_is_pmls_to_its_float32_nodes_and_the_papers_to_rounding(n_bins):
    x = batch()
    a, b = HistogramLoss(n_bins)(x, LABELS), _pml(n_bins)(x, LABELS)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for got, want in zip(torch.autograd.grad(a, x), torch.autograd.grad(b, x)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    expected = _paper_reference(x.detach(), LABELS.tolist(), n_bins)
    assert a.item() == pytest.approx(expected, rel=1e-12)
    assert abs(b.item() - expected) > 1e-9  # PML's float32 nodes


def _mined(x: torch.Tensor, labels: torch.Tensor) -> list[tuple]:
    """A miner's triplets (semi-hard and harder) and pairs (multi-similarity) on the batch."""
    return [pml_miners.TripletMarginMiner(margin=0.3, type_of_triplets="all")(x, labels),
            pml_miners.MultiSimilarityMiner(epsilon=0.2)(x, labels)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("seed", [1, 2])
def test_larger_batch_with_miners_equals_pml(dtype, seed):
    x = batch(96, 16, dtype=dtype, seed=seed)
    labels = torch.arange(96) % 12
    for indices_tuple in [None, *_mined(x.detach(), labels)]:
        assert indices_tuple is None or len(indices_tuple[0]) > 100
        a, b = HistogramLoss(64)(x, labels, indices_tuple), _pml(64)(x, labels, indices_tuple)
        assert 0 < a.item() < 1
        assert_same_value_and_gradients(a, b, (x,))


def test_repeated_and_reversed_pairs_count_once_as_in_pml():
    x = batch()
    # (0, 3) twice and as (3, 0); the negative (0, 1) twice and as (1, 0) from anchor 1
    triplets = (torch.tensor([0, 0, 3, 1, 8]), torch.tensor([3, 3, 0, 5, 0]), torch.tensor([1, 1, 2, 0, 4]))
    a, b = HistogramLoss(4)(x, LABELS, triplets), _pml(4)(x, LABELS, triplets)
    assert 0 < a.item() < 1
    assert_same_value_and_gradients(a, b, (x,))


def _paper_reference(x: torch.Tensor, labels: list[int], n_bins: int) -> float:
    """Ustinova & Lempitsky's Eqs. 2-4 with loops in float64: triangular kernels of width Δ = 2 / R on the nodes
    -1, -1 + Δ, ..., 1 for every unordered pair's cosine, the histograms normalised by the pair counts, then
    sum_r h-_r * (sum_{q <= r} h+_q). Pairs: every pair of the batch with an end that has a positive and a negative."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    n, delta = len(rows), 2 / n_bins
    has = [any(labels[j] == labels[i] for j in range(n) if j != i) and any(b != labels[i] for b in labels)
           for i in range(n)]
    h_pos, h_neg = [0.0] * (n_bins + 1), [0.0] * (n_bins + 1)
    n_pos = n_neg = 0
    for i in range(n):
        for j in range(i + 1, n):
            if not (has[i] or has[j]):
                continue
            s = sum(p * q for p, q in zip(rows[i], rows[j]))
            hist = h_pos if labels[i] == labels[j] else h_neg
            for r in range(n_bins + 1):
                hist[r] += max(0.0, 1 - abs(s - (-1 + r * delta)) / delta)
            n_pos, n_neg = n_pos + (labels[i] == labels[j]), n_neg + (labels[i] != labels[j])
    loss, cumulative = 0.0, 0.0
    for r in range(n_bins + 1):
        cumulative += h_pos[r] / n_pos
        loss += h_neg[r] / n_neg * cumulative
    return loss


@pytest.mark.parametrize("n_bins", [1, 5, 20, 100])
@pytest.mark.parametrize("seed", [7, 8])
def test_equals_the_papers_formula(n_bins, seed):
    x = batch(seed=seed)
    expected = _paper_reference(x.detach(), LABELS.tolist(), n_bins)
    assert HistogramLoss(n_bins)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def _on_circle(degrees: list[float]) -> torch.Tensor:
    angles = torch.tensor(degrees, dtype=torch.float64).deg2rad()
    return torch.stack([angles.cos(), angles.sin()], dim=1).requires_grad_()


def test_hand_computed_case():
    # writer 0 at 0° and 60°, writer 1 at 180° and 240°: positive cosines 1/2, 1/2; negative -1, -1/2, -1/2, -1
    x, labels = _on_circle([0.0, 60.0, 180.0, 240.0]), torch.tensor([0, 0, 1, 1])
    # R = 2 (nodes -1, 0, 1): h+ = (0, 1/2, 1/2), Φ+ = (0, 1/2, 1); h- = (3/4, 1/4, 0): L = 1/4 * 1/2
    assert HistogramLoss(2)(x, labels).item() == pytest.approx(0.125, abs=1e-12)
    assert HistogramLoss(delta=1.0)(x, labels).item() == pytest.approx(0.125, abs=1e-12)
    # R = 4 (nodes -1, -1/2, 0, 1/2, 1): positives sit on 1/2, negatives on -1 and -1/2: no overlap
    assert HistogramLoss(4)(x, labels).item() == pytest.approx(0.0, abs=1e-12)
    # R = 1 (nodes -1, 1): h+ = (1/4, 3/4), h- = (7/8, 1/8): L = 7/8 * 1/4 + 1/8 * 1
    assert HistogramLoss(1)(x, labels).item() == pytest.approx(7 / 32 + 1 / 8, abs=1e-12)


def test_pairs_of_two_samples_without_positives_are_left_out_as_in_pml():
    x = batch()
    labels = torch.tensor([0, 1, 2, 0, 3, 1, 1, 2, 0, 4, 2, 5])  # 4 and 5 are singletons: pair (9, 11) is no triplet's
    a, b = HistogramLoss(4)(x, labels), _pml(4)(x, labels)
    assert_same_value_and_gradients(a, b, (x,))
    assert a.item() == pytest.approx(_paper_reference(x.detach(), labels.tolist(), 4), rel=1e-12)


def test_a_cosine_of_one_lands_on_the_last_node_where_pml_indexes_past_it():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.6, 0.8]], dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 0, 1])  # the negative pair (0, 1) has cosine exactly 1
    loss = HistogramLoss(4)(x, labels)
    assert loss.item() == pytest.approx(_paper_reference(x.detach(), labels.tolist(), 4), rel=1e-12)
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()
    with pytest.raises(RuntimeError):
        _pml(4)(x, labels)


@pytest.mark.parametrize("labels", [torch.zeros(12, dtype=torch.long), torch.arange(12)])
def test_a_batch_without_triplets_gives_zero_with_finite_gradients(labels):
    x = batch()
    loss = HistogramLoss()(x, labels)
    assert loss.item() == 0.0 and _pml(100)(x, labels).item() == 0.0
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()


def test_an_empty_miner_tuple_gives_zero():
    x = batch()
    empty = torch.tensor([], dtype=torch.long)
    for indices_tuple in [(empty,) * 3, (empty,) * 4, TUPLES[1][:2] + (empty, empty)]:
        loss = HistogramLoss()(x, LABELS, indices_tuple)
        assert loss.item() == 0.0 and torch.isfinite(torch.autograd.grad(loss, x)[0]).all()


def test_n_bins_and_delta_are_two_names_for_one_setting():
    x = batch()
    assert HistogramLoss().n_bins == 100 and HistogramLoss(delta=0.02).n_bins == 100
    assert HistogramLoss(delta=0.1).n_bins == 20 == HistogramLoss(20, 0.1).n_bins
    torch.testing.assert_close(HistogramLoss(delta=0.25)(x, LABELS), HistogramLoss(8)(x, LABELS))


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: HistogramLoss(5)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(HistogramLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(HistogramLoss())
    assert values[-1] < 0.8 * values[0]


def test_needs_the_global_batch():
    assert HistogramLoss.needs_global_batch is True and HistogramLoss.accepts_reference is False


@pytest.mark.parametrize("params", [{}, {"n_bins": 3}, {"delta": 0.5}])
def test_contract(params):
    check_loss(HistogramLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"n_bins": 0}, "n_bins"), ({"n_bins": 2.5}, "n_bins"), ({"n_bins": True}, "n_bins"),
    ({"delta": 0.0}, "delta"), ({"delta": -0.1}, "delta"), ({"delta": 0.3}, "delta"), ({"delta": 5.0}, "delta"),
    ({"n_bins": 10, "delta": 0.1}, "delta must equal 2 / n_bins")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^histogram: {message}"):
        HistogramLoss(**kwargs)
