"""SNR contrastive loss: value and gradient against PML SignalToNoiseRatioContrastiveLoss (its regulariser, reducers,
tuples and a reference set too), the paper's formula in float64, a hand-computed case, edges."""

from __future__ import annotations

import statistics

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses, reducers, regularizers

from hvkit.testing import check_loss
from hvkit_plugins.losses.snr_contrastive import SNRContrastiveLoss

from .pair_batch import (LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference, training_values)

SETTINGS = [(0.0, 1.0, 0.0), (0.5, 2.5, 0.1)]  # PML's defaults; margins keeping both kinds of terms, a regulariser


def _pml(pos_margin: float, neg_margin: float, weight: float, normalize: bool = True,
         reduction: str = "nonzero_mean") -> torch.nn.Module:
    reducer = reducers.AvgNonZeroReducer() if reduction == "nonzero_mean" else reducers.MeanReducer()
    regulariser = {"embedding_regularizer": regularizers.ZeroMeanRegularizer(), "embedding_reg_weight": weight}
    return pml_losses.SignalToNoiseRatioContrastiveLoss(
        pos_margin=pos_margin, neg_margin=neg_margin, distance=distances.SNRDistance(normalize_embeddings=normalize), reducer=reducer,
        **(regulariser if weight else {}))


def test_the_defaults_are_pmls():
    x = batch()
    assert_same_value_and_gradients(SNRContrastiveLoss()(x, LABELS),
                                    pml_losses.SignalToNoiseRatioContrastiveLoss()(x, LABELS), (x,))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("pos_margin", "neg_margin", "weight"), SETTINGS)
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("reduction", ["nonzero_mean", "mean"])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, pos_margin, neg_margin, weight, normalize, reduction, indices_tuple):
    x = batch(dtype=dtype)
    ours = SNRContrastiveLoss(pos_margin, neg_margin, weight, normalize, reduction)
    a, b = ours(x, LABELS, indices_tuple), _pml(pos_margin, neg_margin, weight, normalize, reduction)(
        x, LABELS, indices_tuple)
    assert a.dtype == dtype and a.item() > 0
    assert_same_value_and_gradients(a, b, (x,))


@pytest.mark.parametrize(("pos_margin", "neg_margin", "weight"), SETTINGS)
@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_reference_set_value_and_gradient_equal_pml(pos_margin, neg_margin, weight, indices_tuple):
    x, r = batch(), reference()
    a = SNRContrastiveLoss(pos_margin, neg_margin, weight)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    b = _pml(pos_margin, neg_margin, weight)(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS)
    assert a.item() > 0
    assert_same_value_and_gradients(a, b, (x, r))


def test_repeated_pairs_count_as_in_pml():
    x = batch()
    triplets = (torch.tensor([0, 0, 0, 3, 3, 1]), torch.tensor([3, 3, 8, 0, 0, 5]), torch.tensor([1, 2, 1, 1, 1, 0]))
    assert_same_value_and_gradients(SNRContrastiveLoss(0.5, 2.5)(x, LABELS, triplets),
                                    _pml(0.5, 2.5, 0.0)(x, LABELS, triplets), (x,))


def _snr(a: list[float], b: list[float]) -> float:
    return statistics.variance([v - u for u, v in zip(a, b)]) / statistics.variance(a)


def _paper_reference(x: list[list[float]], labels: list[int], pairs: list[tuple[int, int]], pos_margin: float,
                     neg_margin: float, weight: float) -> float:
    """Yuan et al.'s SNR contrastive loss in float64 with loops on the raw embeddings: each hinge averaged over its
    non-zero terms, plus weight * mean_i |sum_k x_ik|."""
    pulled = [max(0.0, _snr(x[i], x[j]) - pos_margin) for i, j in pairs if labels[i] == labels[j]]
    pushed = [max(0.0, neg_margin - _snr(x[i], x[j])) for i, j in pairs if labels[i] != labels[j]]
    mean = lambda terms: sum(terms) / max(1, sum(t > 0 for t in terms))  # noqa: E731
    return mean(pulled) + mean(pushed) + weight * sum(abs(sum(row)) for row in x) / len(x)


@pytest.mark.parametrize(("pos_margin", "neg_margin", "weight"), SETTINGS)
def test_equals_the_papers_formula(pos_margin, neg_margin, weight):
    x = batch()
    every_pair = [(i, j) for i in range(12) for j in range(12) if i != j]
    expected = _paper_reference(x.tolist(), LABELS.tolist(), every_pair, pos_margin, neg_margin, weight)
    loss = SNRContrastiveLoss(pos_margin, neg_margin, weight, normalize_embeddings=False)
    assert loss(x, LABELS).item() == pytest.approx(expected, rel=1e-10)


def test_a_tuple_of_one_pair_of_each_kind_is_scored_where_pml_gives_zero():
    x = batch()
    pairs = (torch.tensor([0]), torch.tensor([3]), torch.tensor([1]), torch.tensor([2]))
    expected = _paper_reference(x.tolist(), LABELS.tolist(), [(0, 3), (1, 2)], 0.5, 2.5, 0.0)
    assert SNRContrastiveLoss(0.5, 2.5, normalize_embeddings=False)(x, LABELS, pairs).item() == \
        pytest.approx(expected, rel=1e-10)
    assert expected > 0 and _pml(0.5, 2.5, 0.0, normalize=False)(x, LABELS, pairs).item() == 0.0


def test_hand_computed_case():
    x = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0], [0.0, 0.0, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    # var x0 = var x1 = 1, var x2 = 3; var(x1 - x0) = 4, var(x2 - x0) = 1, var(x2 - x1) = 7
    # d01 = d10 = 4; d02 = 1, d12 = 7, d20 = 1/3, d21 = 7/3; margins 1 and 3: pulled 3, 3; pushed 2, 0, 8/3, 2/3
    loss = SNRContrastiveLoss(1.0, 3.0, normalize_embeddings=False)
    assert loss(x, labels).item() == pytest.approx(3 + (2 + 8 / 3 + 2 / 3) / 3, rel=1e-12)
    mean = SNRContrastiveLoss(1.0, 3.0, normalize_embeddings=False, reduction="mean")
    assert mean(x, labels).item() == pytest.approx(3 + (2 + 8 / 3 + 2 / 3) / 4, rel=1e-12)
    regularised = SNRContrastiveLoss(1.0, 3.0, 0.1, normalize_embeddings=False)  # row sums 6, 6, 3
    assert regularised(x, labels).item() == pytest.approx(3 + (2 + 8 / 3 + 2 / 3) / 3 + 0.5, rel=1e-12)


def test_a_batch_of_one_writer_has_only_the_positive_term():
    x = batch()
    same = torch.zeros(12, dtype=torch.long)
    every_pair = [(i, j) for i in range(12) for j in range(12) if i != j]
    expected = _paper_reference(x.tolist(), same.tolist(), every_pair, 0.0, 1.0, 0.0)
    value = SNRContrastiveLoss(normalize_embeddings=False)(x, same)
    value.backward()
    assert value.item() == pytest.approx(expected, rel=1e-10) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", ["one sample", "empty tuple"])
def test_no_pairs_gives_zero_with_finite_gradients(case):
    x = batch()
    empty = torch.tensor([], dtype=torch.long)
    value = (SNRContrastiveLoss()(x[:1], LABELS[:1]) if case == "one sample"
             else SNRContrastiveLoss()(x, LABELS, (empty, empty, empty, empty)))
    value.backward()
    assert value.item() == 0.0 and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("weight", [0.0, 0.1])
def test_gradcheck(weight):
    x = batch()
    assert torch.autograd.gradcheck(lambda x: SNRContrastiveLoss(0.5, 2.5, weight)(x, LABELS), (x,))


def test_full_precision_under_autocast():
    assert_full_precision_under_autocast(SNRContrastiveLoss(0.5, 2.5, 0.1), batch(dtype=torch.float32).detach(),
                                         LABELS)


def test_training_lowers_the_loss():
    values = training_values(SNRContrastiveLoss())
    assert values[-1] < 0.8 * values[0]


@pytest.mark.parametrize("params", [{}, {"regularizer_weight": 0.1, "normalize_embeddings": False}])
def test_contract(params):
    check_loss(SNRContrastiveLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pos_margin": -0.1}, "need 0 <= pos_margin"), ({"pos_margin": 1.0, "neg_margin": 1.0}, "need 0 <= pos_margin"),
    ({"regularizer_weight": -1.0}, "regularizer_weight"), ({"reduction": "sum"}, "reduction")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^snr_contrastive: {message}"):
        SNRContrastiveLoss(**kwargs)
