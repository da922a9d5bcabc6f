"""Weighted sum of losses: value and gradient against PML MultipleLosses, its build from a recipe spec, its
parameters, flags and terms, invalid settings."""

from __future__ import annotations

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit.testing import check_loss
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.losses.intra_pair_variance import IntraPairVarianceLoss
from hvkit_plugins.losses.nca import NCALoss
from hvkit_plugins.losses.tuplet_margin import TupletMarginLoss
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.losses.weighted_sum import WeightedSumLoss

from .pair_batch import LABELS, TUPLES, assert_same_value_and_gradients, batch, training_values


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("weights", [None, [1.0, 0.5, 2.0]])
@pytest.mark.parametrize("indices_tuple", [None, *TUPLES])
def test_value_and_gradient_equal_pml(dtype, weights, indices_tuple):
    x = batch(dtype=dtype)
    ours = WeightedSumLoss([TupletMarginLoss(20.0, 8.0), IntraPairVarianceLoss(0.3, 0.5), NCALoss(4.0)], weights)
    theirs = pml_losses.MultipleLosses(
        [pml_losses.TupletMarginLoss(margin=20.0, scale=8.0),
         pml_losses.IntraPairVarianceLoss(pos_eps=0.3, neg_eps=0.5), pml_losses.NCALoss(softmax_scale=4.0)],
        weights=weights)
    a, b = ours(x, LABELS, indices_tuple), theirs(x, LABELS, indices_tuple)
    assert a.dtype == dtype
    assert_same_value_and_gradients(a, b, (x,))


def test_is_the_weighted_sum_of_its_parts():
    x = batch()
    parts = [TupletMarginLoss(20.0, 8.0), IntraPairVarianceLoss(0.3, 0.5)]
    loss = WeightedSumLoss(parts, [0.25, 3.0])
    value = loss(x, LABELS)
    expected = 0.25 * parts[0](x, LABELS) + 3.0 * parts[1](x, LABELS)
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    terms = loss.terms()
    assert list(terms) == ["0_TupletMarginLoss", "1_IntraPairVarianceLoss"]
    assert 0.25 * terms["0_TupletMarginLoss"].item() + 3.0 * terms["1_IntraPairVarianceLoss"].item() == \
        pytest.approx(value.item(), rel=1e-12)


def test_built_from_a_recipe_spec_with_the_context_and_owning_the_parts_parameters():
    spec = {"name": "weighted_sum", "losses": ["tuplet_margin", {"name": "proxy_anchor", "margin": 0.2}],
            "weights": [1.0, 0.5]}
    loss = build(get_registry(), "loss", spec, embedding_dim=6, num_classes=5)
    assert [type(part).__name__ for part in loss.losses] == ["TupletMarginLoss", "ProxyAnchorLoss"]
    assert loss.losses[1].margin == 0.2 and loss.needs_global_batch
    assert [p.shape for p in loss.parameters()] == [torch.Size([5, 6])]  # the proxies reach the optimiser
    x = batch()
    loss(x, LABELS % 5).backward()
    assert loss.losses[1].proxies.grad.abs().sum() > 0


def test_needs_the_global_batch_or_reads_norms_only_if_a_part_does():
    class Local(TupletMarginLoss):
        needs_global_batch = False

    assert not WeightedSumLoss([Local()]).needs_global_batch
    assert WeightedSumLoss([Local(), IntraPairVarianceLoss()]).needs_global_batch
    assert not WeightedSumLoss([Local(), IntraPairVarianceLoss()]).reads_norms
    assert WeightedSumLoss([Local(), AdaFaceLoss(8, 4)]).reads_norms  # every part then gets them unnormalised


def test_training_lowers_the_loss():
    values = training_values(WeightedSumLoss([TupletMarginLoss(), IntraPairVarianceLoss()]))
    assert values[-1] < 0.8 * values[0]


def test_contract():
    check_loss(WeightedSumLoss, {"losses": ["tuplet_margin", "intra_pair_variance"], "weights": [1.0, 0.5]})


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"losses": []}, "losses must name at least one"),
    ({"losses": [VICRegLoss()]}, "losses must be metric losses"),
    ({"losses": [NCALoss()], "weights": [1.0, 2.0]}, "weights must have one number per loss")])
def test_invalid_settings_raise(kwargs, message):
    with pytest.raises(ValueError, match=f"^weighted_sum: {message}"):
        WeightedSumLoss(**kwargs)
