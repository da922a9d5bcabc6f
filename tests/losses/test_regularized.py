"""Regularised loss: value and gradients against PML losses with regularizers, each regulariser against a float64
formula, the class-weight hook, pass-through of flags, miners, reference sets and terms, build, errors, contract."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning import regularizers as pml_reg

from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit.testing import check_loss
from hvkit_plugins.losses.adaface import AdaFaceLoss
from hvkit_plugins.losses.arcface import ArcFaceLoss
from hvkit_plugins.losses.contra_x import ContraXLoss
from hvkit_plugins.losses.contrastive import ContrastiveLoss
from hvkit_plugins.losses.cosface import CosFaceLoss
from hvkit_plugins.losses.large_margin_softmax import LargeMarginSoftmaxLoss
from hvkit_plugins.losses.normalized_softmax import NormalizedSoftmaxLoss
from hvkit_plugins.losses.proxy_anchor import ProxyAnchorLoss
from hvkit_plugins.losses.proxy_nca import ProxyNCALoss
from hvkit_plugins.losses.regularized import (RegularizedLoss, center_invariant, lp_regularizer, regular_face,
                                              sparse_centers, zero_mean_regularizer)
from hvkit_plugins.losses.soft_triple import SoftTripleLoss
from hvkit_plugins.losses.subcenter_arcface import SubCenterArcFaceLoss
from hvkit_plugins.losses.triplet import TripletLoss
from hvkit_plugins.losses.vicreg import VICRegLoss

from .pair_batch import (CLASSES, LABELS, REF_LABELS, REF_TUPLES, TUPLES, assert_full_precision_under_autocast,
                         assert_same_value_and_gradients, batch, reference)

# PML's LargeMarginSoftmaxLoss calls scipy.special.binom on tensors
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
DIM, K = 6, 3


# --- against PML: the same loss, regularisers and weights --------------------------------------------------------
# Each case: (hvkit inner loss, PML loss given the regularizer keywords, (ours, pml) -> (our W, PML's W, the map of
# PML's W's gradient onto ours: None or torch.t)).

def _arcface(**reg):
    ours = ArcFaceLoss(DIM, CLASSES)
    pml = pml_losses.ArcFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=math.degrees(0.5), scale=64, **reg)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, lambda o, p: (o.weight, p.W, torch.t)


def _cosface(**reg):
    ours = CosFaceLoss(DIM, CLASSES)
    pml = pml_losses.CosFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=0.35, scale=64, **reg)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, lambda o, p: (o.weight, p.W, torch.t)


def _subcenter(**reg):
    ours = SubCenterArcFaceLoss(DIM, CLASSES, sub_centers=K)
    pml = pml_losses.SubCenterArcFaceLoss(num_classes=CLASSES, embedding_size=DIM, margin=math.degrees(0.5),
                                          scale=64, sub_centers=K, **reg)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, lambda o, p: (o.weight, p.W, torch.t)


def _normalized_softmax(**reg):
    ours = NormalizedSoftmaxLoss(DIM, CLASSES)
    pml = pml_losses.NormalizedSoftmaxLoss(num_classes=CLASSES, embedding_size=DIM, temperature=0.05, **reg)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, lambda o, p: (o.weight, p.W, torch.t)


def _large_margin(**reg):
    ours = LargeMarginSoftmaxLoss(DIM, CLASSES, margin=2)
    pml = pml_losses.LargeMarginSoftmaxLoss(num_classes=CLASSES, embedding_size=DIM, margin=2, scale=1, **reg)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, lambda o, p: (o.weight, p.W, torch.t)


def _proxy_anchor(**reg):
    ours = ProxyAnchorLoss(DIM, CLASSES)
    pml = pml_losses.ProxyAnchorLoss(num_classes=CLASSES, embedding_size=DIM, **reg)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml, lambda o, p: (o.proxies, p.proxies, None)


def _proxy_nca(**reg):
    ours = ProxyNCALoss(DIM, CLASSES, temperature=1 / 9)
    pml = pml_losses.ProxyNCALoss(num_classes=CLASSES, embedding_size=DIM, softmax_scale=9, **reg)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml, lambda o, p: (o.proxies, p.proxies, None)


def _soft_triple(**reg):
    ours = SoftTripleLoss(DIM, CLASSES, centers_per_class=4, tau=0.0)
    pml = pml_losses.SoftTripleLoss(num_classes=CLASSES, embedding_size=DIM, centers_per_class=4, **reg)
    pml.fc.data.copy_(ours.proxies.data.T)
    return ours, pml, lambda o, p: (o.proxies, p.fc, torch.t)


PML_CASES = {  # id: (case, our settings, PML's regularizer keywords)
    "arcface+regular_face+lp": (
        _arcface, {"weight_regularizer": "regular_face", "weight_reg_weight": 0.7, "embedding_regularizer": "lp",
                   "embedding_reg_weight": 0.01, "embedding_power": 2},
        {"weight_regularizer": pml_reg.RegularFaceRegularizer(), "weight_reg_weight": 0.7,
         "embedding_regularizer": pml_reg.LpRegularizer(power=2), "embedding_reg_weight": 0.01}),
    "cosface+center_invariant+zero_mean": (
        _cosface, {"weight_regularizer": "center_invariant", "weight_reg_weight": 0.3,
                   "embedding_regularizer": "zero_mean", "embedding_reg_weight": 0.05},
        {"weight_regularizer": pml_reg.CenterInvariantRegularizer(), "weight_reg_weight": 0.3,
         "embedding_regularizer": pml_reg.ZeroMeanRegularizer(), "embedding_reg_weight": 0.05}),
    "subcenter_arcface+lp+lp": (
        _subcenter, {"weight_regularizer": "lp", "weight_reg_weight": 0.2, "weight_p": 3, "weight_power": 2,
                     "embedding_regularizer": "lp", "embedding_p": 1},
        {"weight_regularizer": pml_reg.LpRegularizer(p=3, power=2), "weight_reg_weight": 0.2,
         "embedding_regularizer": pml_reg.LpRegularizer(p=1)}),
    "subcenter_arcface+sparse_centers": (
        _subcenter, {"weight_regularizer": "sparse_centers", "weight_reg_weight": 0.5},
        {"weight_regularizer": pml_reg.SparseCentersRegularizer(CLASSES, K), "weight_reg_weight": 0.5}),
    "subcenter_arcface+center_invariant": (
        _subcenter, {"weight_regularizer": "center_invariant"},
        {"weight_regularizer": pml_reg.CenterInvariantRegularizer()}),
    "normalized_softmax+regular_face": (
        _normalized_softmax, {"weight_regularizer": "regular_face", "weight_reg_weight": 2.0},
        {"weight_regularizer": pml_reg.RegularFaceRegularizer(), "weight_reg_weight": 2.0}),
    "large_margin_softmax+center_invariant+lp": (
        _large_margin, {"weight_regularizer": "center_invariant", "weight_reg_weight": 0.5,
                        "embedding_regularizer": "lp", "embedding_reg_weight": 0.1, "embedding_power": 0.5},
        {"weight_regularizer": pml_reg.CenterInvariantRegularizer(), "weight_reg_weight": 0.5,
         "embedding_regularizer": pml_reg.LpRegularizer(power=0.5), "embedding_reg_weight": 0.1}),
    "proxy_anchor+regular_face": (
        _proxy_anchor, {"weight_regularizer": "regular_face", "weight_reg_weight": 0.4},
        {"weight_regularizer": pml_reg.RegularFaceRegularizer(), "weight_reg_weight": 0.4}),
    "proxy_nca+lp": (
        _proxy_nca, {"weight_regularizer": "lp", "weight_reg_weight": 0.1, "embedding_regularizer": "zero_mean"},
        {"weight_regularizer": pml_reg.LpRegularizer(), "weight_reg_weight": 0.1,
         "embedding_regularizer": pml_reg.ZeroMeanRegularizer()}),
    "soft_triple+sparse_centers": (
        _soft_triple, {"weight_regularizer": "sparse_centers", "weight_reg_weight": 0.2},
        {"weight_regularizer": pml_reg.SparseCentersRegularizer(CLASSES, 4), "weight_reg_weight": 0.2}),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", list(PML_CASES))
def test_value_and_gradients_equal_pml(name, dtype):
    case, settings, pml_settings = PML_CASES[name]
    inner, pml, weights = case(**pml_settings)
    ours, pml = RegularizedLoss(inner, **settings).to(dtype), pml.to(dtype)
    ours_w, pml_w, to_ours = weights(inner, pml)
    x = batch(d=DIM, dtype=dtype)
    value, expected = ours(x, LABELS), pml(x, LABELS)
    assert value.dtype == dtype
    torch.testing.assert_close(value, expected)
    assert value.item() != pytest.approx(inner(x, LABELS).item())  # the regularisers count
    got_x, got_w = torch.autograd.grad(value, (x, ours_w))
    want_x, want_w = torch.autograd.grad(expected, (x, pml_w))
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_w, want_w if to_ours is None else to_ours(want_w))
    assert got_w.abs().sum() > 0


@pytest.mark.parametrize("indices_tuple", TUPLES)
def test_a_miner_tuple_goes_to_the_inner_loss_and_the_regularisers_see_every_embedding(indices_tuple):
    _, settings, pml_settings = PML_CASES["arcface+regular_face+lp"]
    inner, pml, _ = _arcface(**pml_settings)
    ours, pml = RegularizedLoss(inner, **settings).double(), pml.double()
    x = batch(d=DIM)
    value, expected = ours(x, LABELS, indices_tuple), pml(x, LABELS, indices_tuple)
    assert value.item() != pytest.approx(ours(x, LABELS).item())
    got_x, got_w = torch.autograd.grad(value, (x, inner.weight))
    want_x, want_w = torch.autograd.grad(expected, (x, pml.W))
    torch.testing.assert_close(got_x, want_x)
    torch.testing.assert_close(got_w, want_w.T)
    torch.testing.assert_close(value, expected)


@pytest.mark.parametrize("indices_tuple", [None, *REF_TUPLES])
def test_with_a_reference_set_only_the_batch_is_regularised_as_in_pml(indices_tuple):
    ours = RegularizedLoss(ContrastiveLoss(0.3, 1.1), embedding_regularizer="lp", embedding_reg_weight=0.5,
                           embedding_power=2)
    pml = pml_losses.ContrastiveLoss(0.3, 1.1, embedding_regularizer=pml_reg.LpRegularizer(power=2),
                                     embedding_reg_weight=0.5)
    assert ours.accepts_reference
    x, r = batch(), reference()
    assert_same_value_and_gradients(ours(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS),
                                    pml(x, LABELS, indices_tuple, ref_emb=r, ref_labels=REF_LABELS), (x, r))


# --- each regulariser against a float64 formula ------------------------------------------------------------------

def _rows(t: torch.Tensor) -> list[list[float]]:
    return t.detach().double().reshape(-1, t.shape[-1]).tolist()


def _norm(v: list[float], p: float = 2.0) -> float:
    return sum(abs(a) ** p for a in v) ** (1 / p)


def _cos(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v)) / (_norm(u) * _norm(v))


@pytest.mark.parametrize(("p", "power"), [(2.0, 1.0), (2.0, 2.0), (1.0, 1.0), (3.0, 0.5)])
def test_lp_is_the_mean_p_norm_to_the_power(p, power):
    x = batch()
    expected = sum(_norm(row, p) ** power for row in _rows(x)) / len(x)
    assert lp_regularizer(x, p, power).item() == pytest.approx(expected, rel=1e-12)


def test_zero_mean_is_the_mean_absolute_component_sum():
    x = batch()
    assert zero_mean_regularizer(x).item() == pytest.approx(sum(abs(sum(r)) for r in _rows(x)) / len(x), rel=1e-12)


@pytest.mark.parametrize("shape", [(CLASSES, DIM), (CLASSES, K, DIM)])
def test_regular_face_is_the_mean_largest_cosine_to_another_class(shape):
    w = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rows, per_class = _rows(w), 1 if len(shape) == 2 else K
    expected = sum(max(_cos(u, v) for j, v in enumerate(rows) if j // per_class != i // per_class)
                   for i, u in enumerate(rows)) / len(rows)
    assert regular_face(w).item() == pytest.approx(expected, rel=1e-12)


def test_regular_face_counts_no_sub_centre_of_the_own_class_as_a_rival():
    """Class 0's sub-centres a, b nearly coincide; class 1's are c, d. PML, given the (C K, D) rows, would take
    a's and b's twin as their nearest (cosine 0.99) and push them apart."""
    s = math.sqrt(1 - 0.99 ** 2)
    w = torch.tensor([[[1.0, 0.0], [0.99, s]], [[0.0, 1.0], [-1.0, 0.0]]], dtype=torch.float64)
    # nearest rival of a: c (0); of b: c (s); of c: b (s); of d: b (-0.99)
    assert regular_face(w).item() == pytest.approx((0.0 + s + s - 0.99) / 4, rel=1e-12)
    pml = pml_reg.RegularFaceRegularizer()(w.reshape(4, 2)).item()
    assert pml == pytest.approx((0.99 + 0.99 + s + 0.0) / 4, rel=1e-12)


def test_center_invariant_is_the_variance_of_the_squared_lengths_over_four():
    w = torch.randn(CLASSES, K, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    squared = [_norm(r) ** 2 for r in _rows(w)]
    mean = sum(squared) / len(squared)
    expected = sum((s - mean) ** 2 / 4 for s in squared) / len(squared)
    assert center_invariant(w).item() == pytest.approx(expected, rel=1e-12)
    assert center_invariant(w[:, 0]).item() == pytest.approx(center_invariant(w[:, :1]).item(), rel=1e-12)


def test_sparse_centers_is_the_mean_distance_of_a_class_s_unit_centres():
    w = torch.randn(CLASSES, 4, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    rows = w.double().tolist()
    total = sum(math.sqrt(2 - 2 * _cos(c[k], c[m])) for c in rows for k in range(4) for m in range(k + 1, 4))
    assert sparse_centers(w).item() == pytest.approx(total / (CLASSES * 4 * 3), rel=1e-12)


def test_regularisers_are_those_of_the_rows_they_are_given():
    """Scaling a class weight changes the length regularisers only; the cosine ones do not see lengths."""
    w = torch.randn(CLASSES, K, DIM, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    scaled = w * torch.rand(CLASSES, K, 1, dtype=torch.float64).add(0.5)
    for f in (regular_face, sparse_centers):
        assert f(scaled).item() == pytest.approx(f(w).item(), rel=1e-12)
    for f in (center_invariant, lp_regularizer):
        assert f(scaled).item() != pytest.approx(f(w).item(), rel=1e-6)


# --- the wrapper ---------------------------------------------------------------------------------------------------

def test_is_the_inner_loss_plus_the_weighted_regularisers_and_terms_say_so():
    inner = SoftTripleLoss(DIM, CLASSES, centers_per_class=K)
    loss = RegularizedLoss(inner, embedding_regularizer="lp", embedding_reg_weight=0.25,
                           weight_regularizer="sparse_centers", weight_reg_weight=3.0).double()
    x = batch(d=DIM)
    value = loss(x, LABELS)
    terms = loss.terms()
    assert list(terms) == ["loss", "softmax", "regulariser", "embedding_reg", "weight_reg"]
    assert terms["loss"].item() == pytest.approx(inner(x, LABELS).item(), rel=1e-12)
    assert terms["embedding_reg"].item() == pytest.approx(lp_regularizer(x).item(), rel=1e-12)
    assert terms["weight_reg"].item() == pytest.approx(sparse_centers(inner.class_weights()).item(), rel=1e-12)
    expected = terms["loss"] + 0.25 * terms["embedding_reg"] + 3.0 * terms["weight_reg"]
    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    assert not any(t.requires_grad for t in terms.values())


def test_class_weights_are_views_of_the_parameters_in_rows():
    """The hook's shapes: (C, D), or (C, K, D) with centre k of class c at [c, k], the parameter's storage."""
    arcface, subcenter = ArcFaceLoss(DIM, CLASSES), SubCenterArcFaceLoss(DIM, CLASSES, sub_centers=K)
    triple, anchor = SoftTripleLoss(DIM, CLASSES, centers_per_class=K), ProxyAnchorLoss(DIM, CLASSES)
    softmax, contra_x = NormalizedSoftmaxLoss(DIM, CLASSES), ContraXLoss(DIM, CLASSES)
    assert arcface.class_weights() is arcface.weight
    torch.testing.assert_close(subcenter.class_weights()[2, 1], subcenter.weight[2 * K + 1], rtol=0, atol=0)
    torch.testing.assert_close(triple.class_weights()[4, 2], triple.proxies[4 * K + 2], rtol=0, atol=0)
    assert anchor.class_weights() is anchor.proxies and softmax.class_weights() is softmax.weight
    assert contra_x.class_weights() is contra_x.classifier.weight
    assert LargeMarginSoftmaxLoss(DIM, CLASSES).class_weights().shape == (CLASSES, DIM)
    for loss, param in ((subcenter, subcenter.weight), (triple, triple.proxies)):
        assert loss.class_weights().data_ptr() == param.data_ptr()


def test_flags_and_miners_are_the_inner_loss_s():
    global_ = RegularizedLoss(ContraXLoss(DIM, CLASSES), weight_regularizer="regular_face")
    local = RegularizedLoss(ArcFaceLoss(DIM, CLASSES), embedding_regularizer="zero_mean")
    assert global_.needs_global_batch and not local.needs_global_batch
    assert not global_.accepts_reference and not local.accepts_reference
    assert RegularizedLoss(AdaFaceLoss(DIM, CLASSES), embedding_regularizer="lp").reads_norms
    assert not local.reads_norms
    proxy = RegularizedLoss(ProxyAnchorLoss(DIM, CLASSES), weight_regularizer="regular_face")
    with pytest.raises(ValueError, match="remove the miner"):
        proxy(batch(d=DIM), LABELS, TUPLES[0])
    with pytest.raises(ValueError, match="^regularized: the loss ArcFaceLoss takes no reference set"):
        local(batch(d=DIM), LABELS, ref_emb=reference(), ref_labels=REF_LABELS)


def test_built_from_a_recipe_spec_with_the_inner_loss_s_parameters():
    spec = {"name": "regularized", "loss": {"name": "soft_triple", "centers_per_class": K, "tau": 0.0},
            "weight_regularizer": "sparse_centers", "weight_reg_weight": 0.2}
    loss = build(get_registry(), "loss", spec, embedding_dim=DIM, num_classes=5)
    assert type(loss.loss).__name__ == "SoftTripleLoss" and loss.loss.tau == 0.0
    assert [p.shape for p in loss.parameters()] == [torch.Size([5 * K, DIM])]  # the centres reach the optimiser
    loss(batch(d=DIM).float(), LABELS % 5).backward()
    assert loss.loss.proxies.grad.abs().sum() > 0


def test_regularisers_run_in_full_precision_under_autocast():
    loss = RegularizedLoss(NormalizedSoftmaxLoss(DIM, CLASSES), embedding_regularizer="lp", embedding_power=2,
                           weight_regularizer="regular_face")
    assert_full_precision_under_autocast(loss, batch(d=DIM, dtype=torch.float32).detach(), LABELS)


@pytest.mark.parametrize("params", [
    {"loss": "arcface", "weight_regularizer": "regular_face", "embedding_regularizer": "lp"},
    {"loss": {"name": "soft_triple", "centers_per_class": 2}, "weight_regularizer": "sparse_centers"},
    {"loss": "contrastive", "embedding_regularizer": "zero_mean"}], ids=["arcface", "soft_triple", "contrastive"])
def test_contract(params):
    check_loss(RegularizedLoss, params)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"loss": VICRegLoss(), "embedding_regularizer": "lp"}, "loss must be a metric loss"),
    ({}, "name an embedding_regularizer or a weight_regularizer"),
    ({"embedding_regularizer": "l2"}, "embedding_regularizer must be one of lp, zero_mean, got 'l2'"),
    ({"weight_regularizer": "regularface"}, "weight_regularizer must be one of regular_face, center_invariant"),
    ({"embedding_regularizer": "lp", "embedding_reg_weight": -1.0}, "embedding_reg_weight and weight_reg_weight"),
    ({"embedding_regularizer": "zero_mean", "embedding_p": 1.0},
     "embedding_p only apply to embedding_regularizer: lp, got embedding_regularizer: zero_mean"),
    ({"weight_regularizer": "regular_face", "weight_p": 1.0, "weight_power": 2.0}, "weight_p and weight_power only"),
    ({"weight_regularizer": "lp", "weight_p": 0.0}, "weight_p and weight_power must be positive"),
    ({"loss": TripletLoss(), "weight_regularizer": "regular_face"},
     "weight_regularizer regular_face needs class weights, and the loss TripletLoss has none"),
    ({"weight_regularizer": "sparse_centers"}, "weight_regularizer sparse_centers merges several centres per class, "
                                               r"and the loss arcface has one \(class weights \(7, 6\)\)"),
    ({"loss": SoftTripleLoss(DIM, CLASSES, centers_per_class=1), "weight_regularizer": "sparse_centers"},
     "weight_regularizer sparse_centers merges several centres per class, and the loss soft_triple has one")])
def test_invalid_settings_raise(kwargs, message):
    kwargs = {"loss": ArcFaceLoss(DIM, CLASSES), **kwargs}
    with pytest.raises(ValueError, match=f"^regularized: {message}"):
        RegularizedLoss(**kwargs)
