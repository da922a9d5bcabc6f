"""Smooth-AP: value and gradient against PML SmoothAPLoss where PML computes it (include_query, C consecutive
classes of C), what PML computes elsewhere, the paper's Eq. 7 with loops in float64 on any batch, hand-computed
cases, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.testing import check_loss
from hvkit_plugins.losses.smooth_ap import SmoothAPLoss

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients, batch,
                         training_values)


def _square_batch(classes: int, dtype: torch.dtype = torch.float64, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    """``classes`` consecutive classes of ``classes`` samples each: the batches PML's grouping gets right."""
    return batch(classes * classes, 6, dtype, seed), torch.arange(classes * classes) // classes


def _assert_equals_pml(ours: torch.Tensor, pml_value: torch.Tensor, x: torch.Tensor) -> None:
    # PML accumulates the APs in a float32 tensor whatever the input's dtype: compare in the input's
    assert_same_value_and_gradients(ours, pml_value.to(ours.dtype), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("classes", [2, 3, 4, 6])
@pytest.mark.parametrize("temperature", [0.01, 0.5])
def test_value_and_gradient_equal_pml_on_its_batches(dtype, classes, temperature):
    x, labels = _square_batch(classes, dtype)
    a = SmoothAPLoss(temperature, include_query=True)(x, labels)
    b = pml_losses.SmoothAPLoss(temperature)(x, labels)
    assert a.dtype == dtype and 0 < a.item() < 1
    _assert_equals_pml(a, b, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("indices_tuple", TUPLES)
def test_miner_weights_equal_pml(dtype, indices_tuple):
    x, labels = _square_batch(4, dtype)
    a = SmoothAPLoss(include_query=True)(x, labels, indices_tuple)
    b = pml_losses.SmoothAPLoss()(x, labels, indices_tuple)
    assert a.item() < SmoothAPLoss(include_query=True)(x, labels).item()  # weights below 1
    _assert_equals_pml(a, b, x)


def test_pml_groups_by_position_in_runs_as_long_as_the_number_of_classes():
    # 3 writers of 2: PML's runs have 3 samples, (0, 1, 2) and (3, 4, 5), whatever the labels say
    x, labels = batch(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])
    b = pml_losses.SmoothAPLoss(0.1)(x, labels)
    _assert_equals_pml(SmoothAPLoss(0.1, include_query=True)(x, torch.arange(6) // 3), b, x)
    assert abs(SmoothAPLoss(0.1, include_query=True)(x, labels).item() - b.item()) > 1e-3
    shuffled = torch.tensor([0, 1, 0, 2, 1, 2])  # equal counts, so PML takes it too, with the same runs
    torch.testing.assert_close(pml_losses.SmoothAPLoss(0.1)(x, shuffled), b)


def _paper_aps(x: torch.Tensor, labels: list[int], temperature: float, include_query: bool = False) -> dict[int, float]:
    """Brown et al.'s Eq. 7 with loops in float64: for each query q with a positive, the mean over its positives i
    of R(i, P) / R(i, Ω), R(i, S) = 1 + sum_{j in S, j != i} sigmoid((s_qj - s_qi) / τ). ``include_query`` adds q
    to both P and Ω."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    n = len(rows)
    aps = {}
    for q in range(n):
        s = [sum(a * b for a, b in zip(rows[q], rows[j])) for j in range(n)]
        retrieved = [j for j in range(n) if j != q or include_query]
        positives = [j for j in retrieved if labels[j] == labels[q]]
        if not any(j != q for j in positives):
            continue

        def rank(i, among):
            return 1 + sum(1 / (1 + math.exp(-(s[j] - s[i]) / temperature)) for j in among if j != i)

        aps[q] = sum(rank(i, positives) / rank(i, retrieved) for i in positives) / len(positives)
    return aps


def _paper_reference(x: torch.Tensor, labels: list[int], temperature: float, include_query: bool = False) -> float:
    """1 - the mean of the queries' APs of :func:`_paper_aps`."""
    aps = _paper_aps(x, labels, temperature, include_query)
    return 1 - sum(aps.values()) / len(aps)


@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@pytest.mark.parametrize("include_query", [False, True])
@pytest.mark.parametrize("seed", [7, 8])
def test_equals_the_papers_formula_on_any_batch(temperature, include_query, seed):
    x = batch(seed=seed)  # LABELS: classes of 3, 3, 3, 2 and 1, interleaved
    expected = _paper_reference(x.detach(), LABELS.tolist(), temperature, include_query)
    assert SmoothAPLoss(temperature, include_query)(x, LABELS).item() == pytest.approx(expected, rel=1e-12)


def test_the_query_itself_changes_the_value():
    x = batch()
    assert abs(SmoothAPLoss()(x, LABELS).item() - SmoothAPLoss(include_query=True)(x, LABELS).item()) > 1e-2


def _exact_ap_loss(x: torch.Tensor, labels: list[int]) -> float:
    """1 - the mean average precision of the batch ranked by cosine, each query's retrieval set the rest of it."""
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    aps = []
    for q in range(len(rows)):
        others = sorted((j for j in range(len(rows)) if j != q),
                        key=lambda j: -sum(a * b for a, b in zip(rows[q], rows[j])))
        hits = [labels[j] == labels[q] for j in others]
        if any(hits):
            aps.append(sum(sum(hits[:k + 1]) / (k + 1) for k, hit in enumerate(hits) if hit) / sum(hits))
    return 1 - sum(aps) / len(aps)


def test_a_small_temperature_gives_the_exact_average_precision():
    x = batch(seed=3)
    assert SmoothAPLoss(1e-6)(x, LABELS).item() == pytest.approx(_exact_ap_loss(x.detach(), LABELS.tolist()), abs=1e-9)


def test_hand_computed_case():
    # x0 at 0°, x1 at 60° (writer 0), x2 at 180° (writer 1, no positive); τ = 1, G(x) = sigmoid(x)
    angles = torch.tensor([0.0, 60.0, 180.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[2.0], [1.0], [0.5]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])

    def g(v):
        return 1 / (1 + math.exp(-v))

    # query 0: positive x1 (cos 1/2), negative x2 (cos -1): AP = 1 / (1 + G(-1 - 1/2));
    # query 1: positive x0 (cos 1/2), negative x2 (cos -1/2): AP = 1 / (1 + G(-1/2 - 1/2))
    expected = 1 - (1 / (1 + g(-1.5)) + 1 / (1 + g(-1.0))) / 2
    assert SmoothAPLoss(1.0)(x, labels).item() == pytest.approx(expected, rel=1e-12)
    # with the query (cos 1 with itself) first among its positives: query 0 ranks {x0, x1} among {x0, x1, x2}
    ap0 = ((1 + g(0.5 - 1)) / (1 + g(0.5 - 1) + g(-1 - 1)) + (1 + g(1 - 0.5)) / (1 + g(1 - 0.5) + g(-1 - 0.5))) / 2
    ap1 = ((1 + g(0.5 - 1)) / (1 + g(0.5 - 1) + g(-0.5 - 1)) + (1 + g(0.5)) / (1 + g(0.5) + g(-0.5 - 0.5))) / 2
    assert SmoothAPLoss(1.0, include_query=True)(x, labels).item() == pytest.approx(1 - (ap0 + ap1) / 2, rel=1e-12)


def test_miner_weights_scale_each_query():
    x = batch()
    triplets = TUPLES[0]  # samples 0, 1 and 3 occur twice, the most: weight 1; 2, 4, 5, 7, 8, 9 once: 1/2; others 0
    counts = torch.bincount(torch.cat(triplets), minlength=12)
    assert counts.max() == 2 and counts.min() == 0
    aps = _paper_aps(x.detach(), LABELS.tolist(), 0.01)
    expected = sum(counts[q].item() / 2 * (1 - ap) for q, ap in aps.items()) / len(aps)
    assert expected > 0 and SmoothAPLoss()(x, LABELS, triplets).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("labels", [torch.zeros(12, dtype=torch.long), torch.arange(12)])
def test_one_writer_or_no_positive_gives_zero_with_finite_gradients(labels):
    x = batch()
    loss = SmoothAPLoss()(x, labels)
    assert loss.item() == pytest.approx(0.0, abs=1e-12)
    assert torch.isfinite(torch.autograd.grad(loss, x)[0]).all()


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: SmoothAPLoss(0.1)(x, LABELS), (x,))
    assert torch.autograd.gradcheck(lambda x: SmoothAPLoss(0.1, include_query=True)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(SmoothAPLoss(), batch(dtype=torch.float32).detach(), LABELS)


def test_training_lowers_the_loss():
    values = training_values(SmoothAPLoss())
    assert values[-1] < 0.8 * values[0]


def test_needs_the_global_batch():
    assert SmoothAPLoss.needs_global_batch is True and SmoothAPLoss.accepts_reference is False


@pytest.mark.parametrize("params", [{}, {"temperature": 0.1, "include_query": True}])
def test_contract(params):
    check_loss(SmoothAPLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"temperature": 0.0}, "temperature"), ({"temperature": -0.01}, "temperature"),
    ({"include_query": 1}, "include_query"), ({"include_query": "yes"}, "include_query")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^smooth_ap: {message}"):
        SmoothAPLoss(**kwargs)
