"""PNP loss: value and gradient of every variant against PML PNPLoss (one block and many), the paper's formula in
float64, a hand-computed case, memory, edges."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

import hvkit_plugins.losses.pnp as pnp
from hvkit.testing import check_loss
from hvkit_plugins.losses.pnp import VARIANTS, PNPLoss

from .pair_batch import (LABELS, TUPLES, assert_full_precision_under_autocast, assert_same_value_and_gradients,
                         batch, training_values)

SETTINGS = [{}, {"b": 3.0, "alpha": 2.0, "anneal": 0.5}]  # PML's defaults (tau 0.01); a soft sigmoid, other b, alpha


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_value_and_gradient_equal_pml(dtype, settings, variant):
    x = batch(dtype=dtype)
    a = PNPLoss(variant=variant, **settings)(x, LABELS)
    b = pml_losses.PNPLoss(variant=variant, **settings)(x, LABELS)
    assert a.dtype == dtype and b.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("variant", VARIANTS)
def test_blocks_of_pairs_change_nothing(monkeypatch, variant):
    x = batch()  # one block of B pairs at a time: 28 pairs of 12 samples in 3 blocks
    monkeypatch.setattr(pnp, "BLOCK_ENTRIES", 1)
    a = PNPLoss(variant=variant, anneal=0.1)(x, LABELS)
    b = pml_losses.PNPLoss(variant=variant, anneal=0.1)(x, LABELS)
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize("indices_tuple", TUPLES)
def test_a_miner_is_refused_as_in_pml(indices_tuple):
    x = batch()
    with pytest.raises(ValueError, match="indices_tuple is not supported"):
        pml_losses.PNPLoss()(x, LABELS, indices_tuple)
    with pytest.raises(ValueError, match="^pnp: .*remove the miner"):
        PNPLoss()(x, LABELS, indices_tuple)


def _paper_reference(x: list[list[float]], labels: list[int], variant: str = "O", b: float = 2.0,
                     alpha: float = 1.0, anneal: float = 0.01) -> float:
    """Li et al.'s Eqs. 5, 7, 9, 12, 13 in float64 with loops: per query with a positive, the mean over S_P (the
    query itself included, as in the authors' code) of the variant's function of R_i, the soft count of negatives
    before positive i; then the mean over those queries."""
    def cosine(u, v):
        return sum(p * q for p, q in zip(u, v)) / math.sqrt(sum(p * p for p in u) * sum(q * q for q in v))

    def sigmoid(t):
        return 1 / (1 + math.exp(-t)) if t >= 0 else math.exp(t) / (1 + math.exp(t))

    shape = {"O": lambda r: r, "Ds": lambda r: math.log1p(r), "Dq": lambda r: 1 - (1 + r) ** -alpha,
             "Iu": lambda r: (1 + r) * math.log1p(r), "Ib": lambda r: (b * r - math.log1p(b * r)) / b ** 2}[variant]
    values = []
    for q in range(len(labels)):
        s = [cosine(x[q], x[j]) for j in range(len(labels))]
        positives = [i for i in range(len(labels)) if labels[i] == labels[q]]
        if len(positives) < 2:
            continue
        negatives = [j for j in range(len(labels)) if labels[j] != labels[q]]
        ranks = [sum(sigmoid((s[j] - s[i]) / anneal) for j in negatives) for i in positives]
        values.append(sum(shape(r) for r in ranks) / len(ranks))
    return sum(values) / len(values)


@pytest.mark.parametrize("settings", SETTINGS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_equals_the_papers_formula(settings, variant):
    x = batch()
    expected = _paper_reference(x.tolist(), LABELS.tolist(), variant, **settings)
    assert PNPLoss(variant=variant, **settings)(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_hand_computed_case():
    # x0 at 0° and x1 at 60° (writer 0), x2 at 30° (writer 1), tau 0.1: for query 0, x2's cosine cos 30° beats x1's
    # cos 60° = 1/2, not x0's own 1; query 1 alike; query 2 has no positive
    angles = torch.tensor([0.0, 60.0, 30.0], dtype=torch.float64).deg2rad()
    x = torch.stack([angles.cos(), angles.sin()], dim=1) * torch.tensor([[1.0], [2.0], [3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    c30 = math.sqrt(3) / 2
    ranks = [1 / (1 + math.exp(-(c30 - 1) / 0.1)), 1 / (1 + math.exp(-(c30 - 0.5) / 0.1))]
    assert PNPLoss(anneal=0.1)(x, labels).item() == pytest.approx(sum(ranks) / 2, rel=1e-12)
    expected = sum(math.log1p(r) for r in ranks) / 2
    assert PNPLoss(anneal=0.1, variant="Ds")(x, labels).item() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("labels", [torch.zeros(12, dtype=torch.long), torch.arange(12)])
def test_one_writer_or_no_positive_pair_gives_zero(variant, labels):
    x = batch()  # one writer: no negative before any positive; all singletons: no query (PML's zero, Dq too)
    value = PNPLoss(variant=variant)(x, labels)
    value.backward()
    assert value.item() == pml_losses.PNPLoss(variant=variant)(x, labels).item() == 0.0
    assert torch.isfinite(x.grad).all()


def test_memory_stays_quadratic(monkeypatch):
    """The autograd graph keeps no (pairs, B) tensor: what the backward saves is O(B^2) at any class size."""
    saved = []
    x = batch(64, 8)
    labels = torch.arange(64) % 2  # two writers: 2 x 32^2 = 2048 pairs, 2048 x 64 sigmoids
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        PNPLoss()(x, labels)
    assert max(saved) <= 64 * 64


def test_gradcheck():
    x = batch()
    assert torch.autograd.gradcheck(lambda x: PNPLoss(anneal=0.2, variant="Iu")(x, LABELS), (x,))
    assert torch.autograd.gradcheck(lambda x: PNPLoss()(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(PNPLoss(), batch(dtype=torch.float32).detach(), LABELS)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_lowers_the_loss(variant):
    # Dq's gradient fades as (1 + R)^-(alpha + 1) where many negatives come first: it needs more steps
    values = training_values(PNPLoss(variant=variant), steps=60 if variant == "Dq" else 30)
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(PNPLoss, {})
    check_loss(PNPLoss, {"variant": "Dq"})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"variant": "Dl"}, "variant"), ({"b": 0.0}, "b"), ({"alpha": -1.0}, "alpha"), ({"anneal": 0.0}, "anneal"),
    ({"anneal": math.nan}, "anneal")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^pnp: {message}"):
        PNPLoss(**kwargs)
