"""self_supervised: a metric loss over two views, against PML's SelfSupervisedLoss and against NT-Xent."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from pytorch_metric_learning import distances, losses as pml_losses, reducers

from hvkit.errors import RecipeError
from hvkit.recipe import load_recipe, validate
from hvkit.api import hookimpl
from hvkit.registry import Registry, get_registry, load_entry_points
from hvkit.testing import check_loss, run_recipe_text, tiny_recipe
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.circle import CircleLoss
from hvkit_plugins.losses.contrastive import ContrastiveLoss
from hvkit_plugins.losses.fast_ap import FastAPLoss
from hvkit_plugins.losses.multi_similarity import MultiSimilarityLoss
from hvkit_plugins.losses.nca import NCALoss
from hvkit_plugins.losses.ntxent import NTXentLoss
from hvkit_plugins.losses.self_supervised import SelfSupervisedLoss
from hvkit_plugins.losses.supcon import SupConLoss
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.losses.tuplet_margin import TupletMarginLoss
from hvkit_plugins.losses.vicreg import VICRegLoss
from hvkit_plugins.losses.weighted_sum import WeightedSumLoss

from .pair_batch import assert_same_value_and_gradients

PAIRS = {  # hvkit's loss and PML's at the same settings
    "triplet": (lambda: TripletLoss(margin=0.2),
                lambda: pml_losses.TripletMarginLoss(margin=0.2, reducer=reducers.AvgNonZeroReducer())),
    "contrastive": (lambda: ContrastiveLoss(0.3, 1.1),
                    lambda: pml_losses.ContrastiveLoss(0.3, 1.1, distance=distances.LpDistance())),
    "multi_similarity": (lambda: MultiSimilarityLoss(mining=False), pml_losses.MultiSimilarityLoss),
    "supcon": (lambda: SupConLoss(temperature=0.1), lambda: pml_losses.SupConLoss(temperature=0.1)),
    "nca": (NCALoss, pml_losses.NCALoss),
    "circle": (CircleLoss, pml_losses.CircleLoss),
    "tuplet_margin": (lambda: TupletMarginLoss(margin=5.73, scale=64.0),
                      lambda: pml_losses.TupletMarginLoss(margin=5.73, scale=64.0)),
}


def views(n: int = 10, d: int = 6, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Two views of n images: a shared part plus noise, float64, requiring gradients."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, d, generator=g, dtype=torch.float64)
    return ((base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_(),
            (base + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)).requires_grad_())


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_value_and_gradients_equal_pml_self_supervised_loss(name, symmetric):
    ours, theirs = PAIRS[name]
    z_a, z_b = views()
    a = SelfSupervisedLoss(ours(), symmetric=symmetric)(z_a, z_b)
    b = pml_losses.SelfSupervisedLoss(theirs(), symmetric=symmetric)(z_a, z_b)
    assert a.item() > 0
    assert_same_value_and_gradients(a, b, (z_a, z_b))


def test_supcon_over_the_stacked_views_is_ntxent():
    """With one positive per sample, SupCon's term is NT-Xent's: −log e^{s⁺/τ} / Σ_{k≠i} e^{s_ik/τ}, averaged."""
    z_a, z_b = views(n=16, d=8)
    a = SelfSupervisedLoss(SupConLoss(temperature=0.2))(z_a, z_b)
    b = NTXentLoss(temperature=0.2)(z_a, z_b)
    assert_same_value_and_gradients(a, b, (z_a, z_b))


def test_the_reference_form_pairs_only_across_views():
    """Without symmetric, a contrastive loss at margins 0 / 2 (every pair counts) averages |z_a[i] − z_b[i]| over
    the B positive pairs and (2 − |z_a[i] − z_b[j]|)₊ over the B(B − 1) negative ones, none within a view."""
    z_a, z_b = views(n=5, d=4)
    loss = SelfSupervisedLoss(ContrastiveLoss(0.0, 2.0, normalize_embeddings=True, reduction="mean"), symmetric=False)
    a_n, b_n = torch.nn.functional.normalize(z_a, dim=1), torch.nn.functional.normalize(z_b, dim=1)
    d = torch.cdist(a_n, b_n)
    off = ~torch.eye(5, dtype=torch.bool)
    expected = d.diagonal().mean() + (2.0 - d[off]).clamp(min=0).mean()
    assert_same_value_and_gradients(loss(z_a, z_b), expected, (z_a, z_b))


def test_terms_are_the_inner_loss_and_conformance():
    check_loss(SelfSupervisedLoss, {"loss": "triplet"})
    check_loss(SelfSupervisedLoss, {"loss": {"name": "multi_similarity"}, "symmetric": False})
    assert SelfSupervisedLoss(TripletLoss()).terms() == {}  # the inner loss reports no parts
    inner = WeightedSumLoss([TripletLoss(), ContrastiveLoss()])
    loss = SelfSupervisedLoss(inner)
    z_a, z_b = views()
    value = loss(z_a, z_b)
    parts = loss.terms()
    assert set(parts) == {"0_TripletLoss", "1_ContrastiveLoss"} and parts == inner.terms()
    torch.testing.assert_close(value.detach(), parts["0_TripletLoss"] + parts["1_ContrastiveLoss"])


def test_refusals():
    with pytest.raises(ValueError, match=r"^self_supervised: loss must be a metric loss \(embeddings, labels\), "
                                         r"got VICRegLoss$"):
        SelfSupervisedLoss(VICRegLoss())
    with pytest.raises(ValueError, match=r"^self_supervised: loss arcface learns weights for a fixed set of "
                                         r"classes, but here each batch's images are new classes"):
        SelfSupervisedLoss(ArcFaceLoss(num_classes=4, embedding_dim=8))
    with pytest.raises(ValueError, match=r"^self_supervised: with symmetric: false the second view is a reference "
                                         r"set, which loss FastAPLoss does not accept"):
        SelfSupervisedLoss(FastAPLoss(), symmetric=False)
    SelfSupervisedLoss(FastAPLoss())  # stacked views need no reference set
    z_a, z_b = views()
    with pytest.raises(ValueError, match=r"^self_supervised: the two views must have one shape, got \(10, 6\) "
                                         r"and \(9, 6\)$"):
        SelfSupervisedLoss(TripletLoss())(z_a, z_b[:9])


@pytest.mark.parametrize("inner,match", [
    ("arcface", r"self_supervised: loss arcface learns weights for a fixed set of classes"),
    ("proxy_anchor", r"self_supervised: loss proxy_anchor learns weights for a fixed set of classes"),
    ("vicreg", r"self_supervised: loss must be a metric loss \(embeddings, labels\), got vicreg"),
])
def test_a_recipe_names_an_unfit_inner_loss_when_validated(tmp_path: Path, inner, match):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe(f"""
      pretrain:
        stage: ssl_pretrain
        loss: {{name: self_supervised, loss: {inner}}}
    """), encoding="utf-8")
    with pytest.raises(RecipeError, match=match) as info:
        validate(load_recipe(path), get_registry(), str(path))
    assert info.value.path == "stages.pretrain.loss.loss" and "\n" not in str(info.value)


class _ThirdPartyProxyLoss(ArcFaceLoss):
    """A class-weight loss that only a non-global registry knows."""


class _ThirdParty:
    @hookimpl
    def register_losses(self, register):
        register("third_party_proxy", _ThirdPartyProxyLoss)


def test_the_inner_loss_is_looked_up_in_the_validating_registry(tmp_path: Path):
    registry = load_entry_points(Registry())
    assert registry.add_plugin(_ThirdParty(), name="third:party", package="third-party"), registry.problems
    assert "third_party_proxy" not in get_registry().names("loss")
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe("""
      pretrain:
        stage: ssl_pretrain
        loss: {name: self_supervised, loss: third_party_proxy}
    """), encoding="utf-8")
    with pytest.raises(RecipeError, match="loss third_party_proxy learns weights for a fixed set of classes") as info:
        validate(load_recipe(path), registry, str(path))
    assert info.value.path == "stages.pretrain.loss.loss"


def test_ssl_pretrain_trains_with_it(tmp_path: Path):
    run_dir = run_recipe_text(tiny_recipe("""
      pretrain:
        stage: ssl_pretrain
        loss: {name: self_supervised, loss: {name: contrastive, neg_margin: 1.0}, symmetric: false}
        head: {name: mlp, dims: [32, 16]}
        batch_size: 16
        train: {max_steps: 6, log_every: 1}
    """, name="self_supervised_tiny"), tmp_path)
    metrics = json.loads((run_dir / "metrics.json").read_text())["pretrain"]
    assert metrics["steps"] == 6 and math.isfinite(metrics["final_loss"]) and metrics["final_loss"] > 0
