"""The conformance kit: checks a plugin author calls from pytest to prove a component keeps hvkit's contract.

Each ``check_<kind>`` takes a *factory* (the class or function a plugin registers) or, where
the kind allows, an already built component, builds it the way hvkit does (with the
context arguments of :data:`hvkit.hookspecs.CONTEXT_ARGS` it accepts, plus ``params``),
exercises it on small random inputs and raises :class:`AssertionError` naming the
component and the broken rule, and saying how to fix it. ::

    from hvkit.testing import check_loss
    from hvkit_myloss import MyLoss

    def test_conforms():
        check_loss(MyLoss, {"margin": 0.3})

A factory is also checked the way ``hvkit list-plugins`` and recipe validation read it:
its parameters and type hints must resolve, each parameter must carry a type hint, and its
docstring's first line is the summary users see. A parameter typed ``Component[kind]``
may be given as a recipe spec (``{"loss": "triplet"}``): it is built from the installed
plugins, as at run time.

End to end, :func:`run_recipe_text` runs a recipe through hvkit's pipeline, and
:func:`tiny_recipe` writes one on a few synthetic writers around the stages under test::

    def test_trains(tmp_path):
        run_recipe_text(tiny_recipe('''
          pretrain:
            stage: ssl_pretrain
            loss: {name: my_loss, margin: 0.3}
            batch_size: 8
            train: {epochs: 1, max_steps: 2}
        '''), tmp_path)
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import math
import textwrap
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import yaml
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu
from torch import nn

from hvkit.api import ComponentKind, MetricLoss, ViewLoss
from hvkit.engine.context import build as build_component
from hvkit.hookspecs import CONTEXT_ARGS
from hvkit.recipe.schema import component_defaults, parameters, special_marker
from hvkit.registry import get_registry

Inputs = Callable[[torch.dtype, torch.Generator], tuple[torch.Tensor, ...]]

__all__ = ["check_backbone", "check_evaluator", "check_head", "check_loss", "check_miner",
           "check_sampler", "check_transform", "evaluation_data", "failing_after_step", "run_recipe_text",
           "tiny_recipe"]


def _is_factory(obj: Any) -> bool:
    return (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismethod(obj)
            or isinstance(obj, functools.partial))


def _label(obj: Any) -> str:
    target = obj.func if isinstance(obj, functools.partial) else obj
    return getattr(target, "__qualname__", None) or type(target).__name__


def _build(kind: str, obj: Any, params: Mapping[str, Any] | None = None,
          **context: Any) -> tuple[Any, str]:
    """``(component, where)``: ``obj`` built as hvkit builds a ``kind`` (or taken as built).

    ``where`` is the prefix of every failure message, e.g. ``check_loss(TripletLoss)``.
    """
    where = f"check_{kind}({_label(obj)})"
    if not _is_factory(obj):
        if params:
            raise TypeError(f"{where}: params only apply to a factory; pass the class or function")
        return obj, where
    try:
        schema, var_kw = parameters(obj)
    except Exception as exc:
        raise AssertionError(f"{where}: hvkit cannot read the factory's parameters "
                             f"({type(exc).__name__}: {exc}); register a Python class or function "
                             "whose type hints all resolve at import time") from None
    if not (inspect.getdoc(obj) or "").strip():
        raise AssertionError(f"{where}: the factory has no docstring; its first line is the "
                             "summary `hvkit list-plugins` shows — write one")
    context_names = CONTEXT_ARGS[kind]
    for p in schema.values():
        if p.hint is Any and p.name not in context_names:
            raise AssertionError(f"{where}: parameter {p.name!r} has no type hint; recipes are "
                                 "checked against the hints, so annotate it (int, float, "
                                 "Literal[...], list[int], X | None …)")
    kwargs = dict(params or {})
    kwargs.update(component_defaults(schema, kwargs))
    for key, value in kwargs.items():
        marker = special_marker(schema[key].hint) if key in schema else None
        if isinstance(marker, ComponentKind) and isinstance(value, (str, dict, list)):
            specs = value if isinstance(value, list) else [value]
            parts = [build_component(get_registry(), marker.kind, v, **context) for v in specs]
            kwargs[key] = parts if isinstance(value, list) else parts[0]
    kwargs.update({k: v for k, v in context.items()
                   if k in context_names and (k in schema or var_kw)})
    try:
        return obj(**kwargs), where
    except Exception as exc:
        raise AssertionError(f"{where}: building it with {sorted(kwargs)} raised "
                             f"{type(exc).__name__}: {exc}") from exc


def _generator(seed: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(seed)
    return g


# --- losses -----------------------------------------------------------------------------------

def _scalar(where: str, case: str, value: Any, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise AssertionError(f"{where}: on {case} it returned {type(value).__name__}, "
                             "expected a scalar torch.Tensor")
    if value.dim() != 0:
        raise AssertionError(f"{where}: on {case} it returned shape {tuple(value.shape)}, "
                             "expected a scalar (shape ()); reduce over the batch")
    if value.dtype != dtype:
        raise AssertionError(f"{where}: on {case} it returned {value.dtype} for {dtype} inputs; "
                             "compute in the inputs' dtype")
    if not torch.isfinite(value):
        raise AssertionError(f"{where}: on {case} it returned {value.item()}, expected a finite loss")
    return value


def _backward(where: str, case: str, value: torch.Tensor, tensors: dict[str, torch.Tensor],
              module: Any, parameters: bool) -> None:
    if not value.requires_grad:
        raise AssertionError(f"{where}: on {case} the loss has no gradient path (requires_grad is "
                             "False) and the trainer calls backward() on every loss; return "
                             "e.g. embeddings.sum() * 0 when there is nothing to learn")
    value.backward()
    for name, tensor in tensors.items():
        if tensor.grad is None:
            raise AssertionError(f"{where}: on {case} no gradient reaches {name}; do not detach "
                                 "them or use .data")
        if not torch.isfinite(tensor.grad).all():
            raise AssertionError(f"{where}: on {case} the gradient of {name} is not finite")
    if parameters and isinstance(module, nn.Module):
        for name, param in module.named_parameters():
            if not param.requires_grad:
                continue
            if param.grad is None:
                raise AssertionError(f"{where}: on {case} its parameter {name!r} gets no gradient, "
                                     "yet the trainer optimises it; use it in forward or set "
                                     "requires_grad=False")
            if not torch.isfinite(param.grad).all():
                raise AssertionError(f"{where}: on {case} the gradient of its parameter {name!r} "
                                     "is not finite")


def _loss_case(where: str, loss: Any, case: str, args: tuple, dtype: torch.dtype,
               graded: dict[str, torch.Tensor], edge: bool, **kwargs: Any) -> str | None:
    """One forward and backward pass; the ValueError's text if an ``edge`` case refused the batch.

    Only an ordinary batch must reach every parameter: an edge batch may leave some unused.
    """
    module = copy.deepcopy(loss)
    if isinstance(module, nn.Module):
        module = module.to(dtype)
    try:
        value = module(*args, **kwargs)
    except Exception as exc:
        if edge and isinstance(exc, ValueError):
            return str(exc)
        hint = ("return a finite loss or raise ValueError saying what the batch lacks" if edge
                else "every such batch must work")
        raise AssertionError(f"{where}: on {case} it raised {type(exc).__name__}: {exc}; "
                             f"{hint}") from exc
    _backward(where, case, _scalar(where, case, value, dtype), graded, module, parameters=not edge)
    return None


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().clone().requires_grad_(True)


def _metric_loss(where: str, loss: MetricLoss, base: torch.Tensor, labels: torch.Tensor,
                 num_classes: int, dtype: torch.dtype) -> None:
    def case(name: str, emb: torch.Tensor, lab: torch.Tensor, edge: bool,
             indices: tuple | None = None) -> str | None:
        e = _leaf(emb.to(dtype))
        return _loss_case(where, loss, f"{name} ({dtype})", (e, lab), dtype, {"the embeddings": e},
                          edge, indices_tuple=indices)

    case("labelled embeddings", base, labels, edge=False)
    refused = {name: case(f"a {name} indices_tuple", base, labels, True, indices)
               for name, indices in (("triplet", lmu.get_all_triplets_indices(labels)),
                                     ("pair", lmu.get_all_pairs_indices(labels)))}
    if (refused["triplet"] is None) != (refused["pair"] is None):
        took, failed = ("triplet", "pair") if refused["pair"] is not None else ("pair", "triplet")
        raise AssertionError(f"{where}: it takes a {took} indices_tuple but on a {failed} one "
                             f"({dtype}) it raised ValueError: {refused[failed]}; a miner may give "
                             "either format, accept both (or refuse miners altogether)")
    case("a batch of one class", base, torch.zeros_like(labels), edge=True)
    case("one sample per class", base[:num_classes], labels[:num_classes], edge=True)
    case("a collapsed batch (all embeddings equal)", base[:1].expand_as(base), labels, edge=True)
    if loss.accepts_reference:
        _reference_set(where, loss, base, labels, num_classes, dtype,
                       [name for name, message in refused.items() if message is None])


def _reference_set(where: str, loss: MetricLoss, base: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   dtype: torch.dtype, formats: list[str]) -> None:
    """``accepts_reference``: the batch's rows are anchors, ``ref_emb``'s rows their partners."""
    params = inspect.signature(loss.forward).parameters
    if not {"ref_emb", "ref_labels"} <= set(params) and not any(
            p.kind is p.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"{where}: accepts_reference is True but forward takes no ref_emb and ref_labels; "
                             "add them (keyword arguments, default None) or leave accepts_reference False")
    rows = len(labels) + 3  # another size than the batch: partner indices reach past its rows
    reference = torch.randn(rows, base.shape[1], generator=_generator(1), dtype=torch.float64)
    ref_labels = torch.arange(rows).flip(0) % num_classes
    tuples = {"pair": lmu.get_all_pairs_indices(labels, ref_labels),
              "triplet": lmu.get_all_triplets_indices(labels, ref_labels)}
    for name in [None, *formats]:
        e, r = _leaf(base.to(dtype)), _leaf(reference.to(dtype))
        _loss_case(where, loss, f"a reference set of {rows} rows and {name or 'no'} indices_tuple ({dtype})",
                   (e, labels), dtype, {"the embeddings": e, "ref_emb": r}, False,
                   indices_tuple=tuples.get(name), ref_emb=r, ref_labels=ref_labels)
    if dtype != torch.float64:
        return

    def run(call: Callable[[Any, torch.Tensor], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        x = _leaf(base)
        value = call(copy.deepcopy(loss).to(dtype), x)
        return value.detach(), torch.autograd.grad(value, x)[0]

    def same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
        return all(torch.allclose(u, v, rtol=1e-6, atol=1e-9) for u, v in zip(a, b))

    for name in formats:  # the batch as its own reference, with the same tuple: the same pairs
        batch_tuple = (lmu.get_all_pairs_indices if name == "pair" else lmu.get_all_triplets_indices)(labels)
        plain = run(lambda f, x: f(x, labels, indices_tuple=batch_tuple))
        itself = run(lambda f, x: f(x, labels, indices_tuple=batch_tuple, ref_emb=x, ref_labels=labels))
        if not same(plain, itself):
            raise AssertionError(f"{where}: with the batch's {name} indices_tuple it gave {plain[0].item():.6g}, "
                                 f"and {itself[0].item():.6g} (or another gradient) given the batch as ref_emb "
                                 "and ref_labels too; the tuple must index (anchor rows of embeddings, partner "
                                 "rows of ref_emb), whatever ref_emb is")
    order = torch.randperm(rows, generator=_generator(2))
    first = run(lambda f, x: f(x, labels, ref_emb=reference, ref_labels=ref_labels))
    shuffled = run(lambda f, x: f(x, labels, ref_emb=reference[order], ref_labels=ref_labels[order]))
    if not same(first, shuffled):
        raise AssertionError(f"{where}: shuffling the rows of ref_emb and ref_labels changed the loss from "
                             f"{first[0].item():.6g} to {shuffled[0].item():.6g} (or its gradient); without an "
                             "indices_tuple every (anchor, reference row) pair counts, whatever its row: no "
                             "diagonal, the reference is another set")


def _map_inputs(maps: tuple[torch.Tensor, ...], rows: torch.Tensor, dtype: torch.dtype,
                graded: dict[str, torch.Tensor], positions: bool = True) -> dict[str, Any]:
    """``maps=(m_a, m_b)`` and ``positions=(p_a, p_b)`` (or None) of the batch's ``rows``; the maps join ``graded``."""
    m_a, m_b = (_leaf(m[rows].to(dtype)) for m in maps[:2])
    graded.update({"maps[0]": m_a, "maps[1]": m_b})
    return {"maps": (m_a, m_b), "positions": tuple(p[rows].to(dtype) for p in maps[2:]) if positions else None}


def _view_loss(where: str, loss: ViewLoss, base: torch.Tensor, noise: torch.Tensor,
               dtype: torch.dtype, maps: tuple[torch.Tensor, ...] | None = None) -> None:
    n = base.shape[0]
    collapsed = base[:1].expand_as(base)
    views = {"two views": (base, base + noise, False, torch.arange(n)),
             "a batch of one sample": (base[:1], base[:1] + noise[:1], True, torch.arange(1)),
             "a collapsed batch (all embeddings equal)": (collapsed, collapsed, True, torch.zeros(n, dtype=torch.long))}
    if maps is not None:
        views["feature maps without positions"] = (base, base + noise, True, torch.arange(n))
    one_call = loss.needs_teacher and getattr(loss, "takes_local_views", False)
    for name, (a, b, edge, rows) in views.items():
        za, zb = _leaf(a.to(dtype)), _leaf(b.to(dtype))
        graded = {"z_a": za} if loss.needs_teacher else {"z_a": za, "z_b": zb}  # z_b: the teacher's, no gradient
        kwargs = {} if maps is None else _map_inputs(maps, rows, dtype, graded, "without positions" not in name)
        if one_call:  # both online views in the call, the teacher's as a keyword (API 1.6)
            kwargs["teacher"] = (b.to(dtype), a.to(dtype))
        _loss_case(where, loss, f"{name} ({dtype})", (za, zb), dtype, graded, edge, **kwargs)
    if loss.needs_teacher:  # a training step ends with observe_teacher (DINO's centre): the loss must still work
        observed = copy.deepcopy(loss).to(dtype)
        teacher = (base + noise).to(dtype)
        try:
            with torch.no_grad():
                observed.observe_teacher([teacher, teacher.flip(0)])
        except Exception as exc:
            raise AssertionError(f"{where}: observe_teacher on two teacher views ({dtype}) raised "
                                 f"{type(exc).__name__}: {exc}") from exc
        za = _leaf(base.to(dtype))
        if one_call:
            online, kwargs = (za, _leaf(teacher)), {"teacher": (teacher, base.to(dtype))}
        else:
            online, kwargs = (za, teacher), {}
        _loss_case(where, observed, f"two views after observe_teacher ({dtype})", online, dtype,
                   {"z_a": za}, edge=False, **kwargs)


def check_loss(loss: Any, params: Mapping[str, Any] | None = None, *, embedding_dim: int = 8,
               num_classes: int = 4, batch_size: int = 16, inputs: Inputs | None = None,
               seed: int = 0, map_channels: int = 8) -> None:
    """A loss returns a finite scalar in the inputs' dtype and backpropagates, on every batch hvkit may give it.

    A :class:`~hvkit.api.MetricLoss` gets ``(embeddings (B,D), labels (B,))`` with
    ``num_classes`` writers, without and with a miner's ``indices_tuple``: it must take both
    pytorch-metric-learning formats (triplets and pairs) or refuse both with ValueError. A
    :class:`~hvkit.api.ViewLoss` gets two views ``(z_a, z_b)`` (with ``needs_teacher`` the
    gradient need only reach ``z_a``: ``z_b`` is the teacher's output, and the loss must still
    work after ``observe_teacher`` of two teacher views, as after a training step; one that also
    ``takes_local_views`` gets both online views and ``teacher=(t_1, t_2)`` in one call; with
    ``takes_feature_maps`` also ``maps`` of 7 x 7 cells of ``map_channels`` and ``positions``, the
    second view a zoomed and shifted crop of the first, and the gradient must reach the maps;
    without positions it must work or raise ValueError). Any other loss needs
    ``inputs(dtype, generator) -> args``. In float32 and float64 the value must be a finite
    scalar in that dtype whose gradient reaches the inputs and every trainable parameter of
    the loss. Edge batches (one class, one sample per class, a collapsed batch of equal
    embeddings, a view batch of one sample) must give a finite value with a gradient path
    or raise ValueError. A MetricLoss with ``accepts_reference`` must take ``ref_emb`` and
    ``ref_labels``: with a reference set of another size, without and with the indices_tuples
    it takes, the gradient reaches ``embeddings`` and ``ref_emb``; given the batch's own
    indices_tuple, passing the batch as the reference too changes nothing (value and
    gradient, float64); without a tuple, shuffling the reference's rows changes nothing.
    """
    if batch_size < 2 * num_classes:
        raise ValueError(f"batch_size {batch_size} must be at least 2 * num_classes ({2 * num_classes})")
    built, where = _build("loss", loss, params, embedding_dim=embedding_dim, num_classes=num_classes,
                          map_channels=map_channels)
    if not callable(built):
        raise AssertionError(f"{where}: built {type(built).__name__}, which is not callable")
    for flag in ("needs_global_batch", "accepts_reference"):
        if not isinstance(getattr(built, flag, False), bool):
            raise AssertionError(f"{where}: {flag} must be a bool")
    g = _generator(seed)
    base = torch.randn(batch_size, embedding_dim, generator=g, dtype=torch.float64)
    noise = 0.1 * torch.randn(batch_size, embedding_dim, generator=g, dtype=torch.float64)
    labels = torch.arange(batch_size) % num_classes
    maps = None
    if getattr(built, "takes_feature_maps", False):
        m_a = torch.randn(batch_size, map_channels, 7, 7, generator=g, dtype=torch.float64)
        m_b = m_a + 0.1 * torch.randn(m_a.shape, generator=g, dtype=torch.float64)
        identity = torch.eye(3, dtype=torch.float64)[:2].expand(batch_size, 2, 3)
        p_a = torch.nn.functional.affine_grid(identity, [batch_size, 1, 7, 7], align_corners=False)
        maps = (m_a, m_b, p_a, 0.8 * p_a + 0.1)
    for dtype in (torch.float32, torch.float64):
        if isinstance(built, MetricLoss):
            _metric_loss(where, built, base, labels, num_classes, dtype)
        elif isinstance(built, ViewLoss):
            _view_loss(where, built, base, noise, dtype, maps)
        elif inputs is not None:
            args = tuple(_leaf(a) if a.is_floating_point() else a for a in inputs(dtype, _generator(seed)))
            graded = {f"argument {i}": a for i, a in enumerate(args) if a.requires_grad}
            _loss_case(where, built, f"the given inputs ({dtype})", args, dtype, graded, edge=False)
        else:
            raise AssertionError(f"{where}: {type(built).__name__} is neither a MetricLoss nor a "
                                 "ViewLoss; subclass one (hvkit.api) or pass inputs=... to check "
                                 "its own forward")


# --- miners -----------------------------------------------------------------------------------

def _check_indices(where: str, case: str, out: Any, labels: torch.Tensor,
                   ref_labels: torch.Tensor | None = None) -> None:
    """Valid PML indices: anchors index ``labels`` (the batch), partners ``ref_labels`` (default: the batch)."""
    if not isinstance(out, tuple) or len(out) not in (3, 4) or not all(
            isinstance(t, torch.Tensor) for t in out):
        raise AssertionError(f"{where}: on {case} it returned {type(out).__name__}; expected a "
                             "tuple of 3 (anchor, positive, negative) or 4 (anchor, positive, "
                             "anchor, negative) index tensors, pytorch-metric-learning's format")
    reference = ref_labels is not None
    ref_lab = (ref_labels if reference else labels).cpu()
    for i, t in enumerate(out):
        if t.dim() != 1 or t.dtype != torch.int64:
            raise AssertionError(f"{where}: on {case} an index tensor has shape {tuple(t.shape)} "
                                 f"and dtype {t.dtype}; expected 1-D int64")
        anchor = i == 0 or (len(out) == 4 and i == 2)
        rows, what = (len(labels), "an anchor") if anchor else (len(ref_lab), "a partner")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= rows):
            side = ("the batch's rows" if anchor else "the rows of ref_emb") if reference else "the batch"
            raise AssertionError(f"{where}: on {case} {what} index is outside 0..{rows - 1}, {side}" +
                                 ("; anchors index embeddings, partners ref_emb" if reference else ""))
    lab = labels.cpu()
    groups = [(out[0], out[1], out[2])] if len(out) == 3 else [(out[0], out[1], None),
                                                                (out[2], None, out[3])]
    for anchor, pos, neg in groups:
        other = pos if pos is not None else neg
        if len(anchor) != len(other):
            raise AssertionError(f"{where}: on {case} anchors and their partners differ in "
                                 f"length ({len(anchor)} vs {len(other)})")
        a = anchor.cpu()
        if pos is not None:
            p = pos.cpu()
            if (lab[a] != ref_lab[p]).any():
                raise AssertionError(f"{where}: on {case} a positive has another label than its anchor" +
                                     (" (a positive's label is ref_labels[p])" if reference else ""))
            if not reference and (a == p).any():
                raise AssertionError(f"{where}: on {case} a positive is the anchor itself")
        if neg is not None and (lab[a] == ref_lab[neg.cpu()]).any():
            raise AssertionError(f"{where}: on {case} a negative has its anchor's label")


def _mine(where: str, built: Any, case: str, emb: torch.Tensor, lab: torch.Tensor, edge: bool, seed: int,
          **reference: torch.Tensor) -> tuple | None:
    """One checked call (None if an ``edge`` case refused it with ValueError), and the same result a second time."""
    kept = {name: t.clone() for name, t in (("embeddings", emb), *reference.items())}
    try:
        torch.manual_seed(seed)
        out = built(emb, lab, **reference)
    except Exception as exc:
        if edge and isinstance(exc, ValueError):
            return None
        hint = "return empty indices or raise ValueError" if edge else "every such batch must work"
        raise AssertionError(f"{where}: on {case} it raised {type(exc).__name__}: {exc}; "
                             f"{hint}") from exc
    for name, t in (("embeddings", emb), *reference.items()):
        if not torch.equal(t, kept[name]):
            raise AssertionError(f"{where}: on {case} it modified the {name} in place")
    _check_indices(where, case, out, lab, reference.get("ref_labels"))
    torch.manual_seed(seed)
    again = built(emb, lab, **reference)
    if not all(torch.equal(x, y) for x, y in zip(out, again)):
        raise AssertionError(f"{where}: on {case} two calls under the same torch seed mined "
                             "different indices; draw randomness from torch's generator")
    return out


def _miner_reference(where: str, built: Any, base: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     seed: int) -> None:
    """``accepts_reference``: anchors index the batch, partners ``ref_emb``, whose rows count in any order."""
    params = inspect.signature(built.forward if isinstance(built, nn.Module) else built).parameters
    if not {"ref_emb", "ref_labels"} <= set(params) and not any(
            p.kind is p.VAR_KEYWORD for p in params.values()):
        raise AssertionError(f"{where}: accepts_reference is True but it takes no ref_emb and ref_labels; "
                             "add them (keyword arguments, default None) or leave accepts_reference False")
    rows = len(labels) + 3  # another size than the batch: partner indices reach past its rows
    reference = torch.randn(rows, base.shape[1], generator=_generator(seed + 1), dtype=torch.float64)
    ref_labels = torch.arange(rows).flip(0) % num_classes
    order = torch.randperm(rows, generator=_generator(seed + 2))
    for dtype in (torch.float32, torch.float64):
        e, r = base.to(dtype), reference.to(dtype)
        _mine(where, built, f"a reference set of one class ({dtype})", e, labels, True, seed, ref_emb=r,
              ref_labels=torch.zeros_like(ref_labels))
        name = f"a reference set of {rows} rows ({dtype})"
        first = _mine(where, built, name, e, labels, False, seed, ref_emb=r, ref_labels=ref_labels)
        other = _mine(where, built, f"{name} under another seed", e, labels, False, seed + 1, ref_emb=r,
                      ref_labels=ref_labels)
        if not all(torch.equal(x, y) for x, y in zip(first, other)):
            continue  # random: the order of the rows may change its draws too
        shuffled = _mine(where, built, f"a shuffled reference set ({dtype})", e, labels, False, seed,
                         ref_emb=r[order], ref_labels=ref_labels[order])
        mapped = tuple(t if i == 0 or (len(first) == 4 and i == 2) else order[t] for i, t in enumerate(shuffled))
        if _tuple_sets(first) != _tuple_sets(mapped):
            raise AssertionError(f"{where}: shuffling the rows of ref_emb and ref_labels changed the tuples it "
                                 f"mined ({dtype}), though it mines the same ones under any torch seed; every "
                                 "(anchor, reference row) pair is a candidate whatever its row: no diagonal, "
                                 "the reference is another set")


def _tuple_sets(out: tuple) -> list[list[tuple[int, ...]]]:
    """The triplets, or the positive and the negative pairs, each sorted: what a miner mined, in any order."""
    groups = [out] if len(out) == 3 else [out[:2], out[2:]]
    return [sorted(zip(*(t.tolist() for t in g))) for g in groups]


def check_miner(miner: Any, params: Mapping[str, Any] | None = None, *, embedding_dim: int = 8,
                num_classes: int = 4, batch_size: int = 16, seed: int = 0) -> None:
    """A miner returns valid pytorch-metric-learning indices, reproducibly, and leaves the embeddings alone.

    Triplets must be (anchor, same label, other label), pairs (anchor, positive) of one
    label and (anchor, negative) of two, every index in the batch, int64. The result must
    be the same twice under the same ``torch.manual_seed`` (a resumed run replays it).
    A batch of one class or of one sample per class gives valid (maybe empty) indices or
    a ValueError. A miner with ``accepts_reference = True`` must take ``ref_emb`` and
    ``ref_labels``: given a reference set of another size than the batch, its anchors index
    the batch and its positives and negatives the reference (a positive may be the anchor's
    own row number: the reference is another set), it leaves ``ref_emb`` alone, and a miner
    whose tuples do not depend on the torch seed mines the same (anchor, reference row)
    tuples from the reference's rows shuffled.
    """
    built, where = _build("miner", miner, params)
    flag = getattr(built, "accepts_reference", False)
    if not isinstance(flag, bool):
        raise AssertionError(f"{where}: accepts_reference must be a bool, got {flag!r}")
    g = _generator(seed)
    base = torch.randn(batch_size, embedding_dim, generator=g, dtype=torch.float64)
    labels = torch.arange(batch_size) % num_classes
    cases = {
        "labelled embeddings": (base, labels, False),
        "a batch of one class": (base, torch.zeros_like(labels), True),
        "one sample per class": (base[:num_classes], labels[:num_classes], True),
    }
    for dtype in (torch.float32, torch.float64):
        for case, (emb, lab, edge) in cases.items():
            _mine(where, built, f"{case} ({dtype})", emb.to(dtype), lab, edge, seed)
    if flag:
        _miner_reference(where, built, base, labels, num_classes, seed)


# --- samplers ---------------------------------------------------------------------------------

def check_sampler(sampler: Callable, params: Mapping[str, Any] | None = None, *,
                  labels: Sequence[int] | None = None, batch_size: int = 8, seed: int = 0,
                  world_size: int = 2, allow_repeats: bool = False, groups: Sequence[int] | None = None,
                  documents: Sequence[int] | None = None) -> None:
    """A sampler yields valid batches, the same ones for the same (seed, epoch), and disjoint shares per rank.

    Every batch holds 1..``batch_size`` distinct indices into ``labels`` (default 12
    writers x 8 images; ``allow_repeats`` permits an index twice in a batch); ``len()``
    is the number of batches an epoch yields. Iterating twice, or rebuilding with the same
    seed, repeats an epoch; another epoch or seed changes it. With ``world_size`` ranks,
    each rank yields ``len()`` batches, the same number on every rank (else DDP hangs), and
    the ranks' shares differ. When a single process's epoch repeats no index, the ranks
    together repeat no more indices than padding to equal shares needs (their total beyond
    ``len(labels)``); otherwise no batch is on two ranks. ``groups`` (each label's writer's group)
    and ``documents`` (each label's document) are passed as hvkit's context arguments of those names, for
    a sampler that takes them.
    """
    if not _is_factory(sampler):
        raise TypeError("check_sampler takes the factory: hvkit builds samplers with labels, "
                        "batch_size, seed, rank and world_size")
    labels = np.asarray(np.arange(96) % 12 if labels is None else labels, dtype=np.int64)

    def make(seed: int = seed, rank: int = 0, world: int = 1) -> tuple[Any, str]:
        return _build("sampler", sampler, params, labels=labels, batch_size=batch_size, seed=seed,
                     rank=rank, world_size=world, groups=None if groups is None else np.asarray(groups),
                     documents=None if documents is None else np.asarray(documents))

    first, where = make()

    def epoch(s: Any, number: int) -> list[list[int]]:
        try:
            s.set_epoch(number)
            return [list(b) for b in s]
        except Exception as exc:
            raise AssertionError(f"{where}: epoch {number} raised {type(exc).__name__}: {exc}") from exc

    for attr in ("__iter__", "__len__", "set_epoch"):
        if not callable(getattr(first, attr, None)):
            raise AssertionError(f"{where}: it has no {attr}; a sampler is a hvkit.api.BatchSampler")
    batches = epoch(first, 0)
    if not batches or len(batches) != len(first):
        raise AssertionError(f"{where}: an epoch yielded {len(batches)} batches but len() is "
                             f"{len(first)}; they must agree and be at least 1")
    for i, batch in enumerate(batches):
        if not 1 <= len(batch) <= batch_size:
            raise AssertionError(f"{where}: batch {i} holds {len(batch)} indices, expected 1 to "
                                 f"batch_size={batch_size}")
        if not all(isinstance(j, (int, np.integer)) and not isinstance(j, bool) for j in batch):
            raise AssertionError(f"{where}: batch {i} holds non-integer indices")
        if min(batch) < 0 or max(batch) >= len(labels):
            raise AssertionError(f"{where}: batch {i} holds an index outside 0..{len(labels) - 1}")
        if not allow_repeats and len(set(batch)) != len(batch):
            raise AssertionError(f"{where}: batch {i} holds an index twice (a sample paired with "
                                 "itself); pass allow_repeats=True if that is intended")
    if epoch(first, 0) != batches:
        raise AssertionError(f"{where}: iterating epoch 0 twice gave different batches; draw "
                             "from a generator seeded by (seed, epoch) at each iter()")
    if epoch(make()[0], 0) != batches:
        raise AssertionError(f"{where}: two samplers with seed {seed} gave different batches; use "
                             "only the seed given, never global random state")
    if epoch(first, 1) == batches:
        raise AssertionError(f"{where}: epochs 0 and 1 gave the same batches; set_epoch must "
                             "change the order")
    if epoch(first, 0) != batches:
        raise AssertionError(f"{where}: returning to epoch 0 with set_epoch(0) did not repeat "
                             "it; a resumed run must see the same batches")
    if epoch(make(seed=seed + 1)[0], 0) == batches:
        raise AssertionError(f"{where}: seeds {seed} and {seed + 1} gave the same batches; the "
                             "sampler ignores its seed")
    flat = [j for b in batches for j in b]
    repeats = len(set(flat)) != len(flat)
    shares = []
    for rank in range(world_size):
        s = make(rank=rank, world=world_size)[0]
        share = epoch(s, 0)
        if len(share) != len(s):
            raise AssertionError(f"{where}: rank {rank} of {world_size} yielded {len(share)} "
                                 f"batches but its len() is {len(s)}")
        shares.append(share)
    if len({len(s) for s in shares}) != 1:
        raise AssertionError(f"{where}: ranks yield {[len(s) for s in shares]} batches; every "
                             "rank must yield the same number or DDP hangs")
    for r in range(world_size):
        for q in range(r + 1, world_size):
            clash = {tuple(b) for b in shares[r]} & {tuple(b) for b in shares[q]}
            if clash:
                raise AssertionError(f"{where}: ranks {r} and {q} both yield batch "
                                     f"{list(next(iter(clash)))}; each rank must yield its own "
                                     "share of the epoch")
    if not repeats:
        dealt = [j for share in shares for b in share for j in b]
        repeated, padding = len(dealt) - len(set(dealt)), max(0, len(dealt) - len(labels))
        if repeated > padding:
            raise AssertionError(f"{where}: its {world_size} ranks repeat {repeated} indices "
                                 f"where padding explains {padding}; deal one shuffled epoch "
                                 "out to the ranks instead of shuffling per rank")


# --- evaluators -------------------------------------------------------------------------------

def evaluation_data(seed: int = 0, writers: int = 6, per_writer: int = 5, dim: int = 8) -> Any:
    """A small :class:`hvkit.evaluation.EvalData`: separable writers; reference and validation sets; a cosine verifier."""
    from hvkit.evaluation import EvalData, PairSet

    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(writers, dim))

    def part() -> tuple[np.ndarray, np.ndarray]:
        labels = np.repeat(np.arange(writers), per_writer)
        return centres[labels] + 0.5 * rng.normal(size=(len(labels), dim)), labels

    def pairs(emb: np.ndarray, labels: np.ndarray) -> PairSet:
        i, j = np.triu_indices(len(labels), k=1)
        unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
        return PairSet(np.sum(unit[i] * unit[j], axis=1), labels[i] == labels[j], labels[i])

    (test, test_labels), (val, val_labels), (reference, reference_labels) = part(), part(), part()
    return EvalData(test, test_labels, reference_embeddings=reference, reference_labels=reference_labels,
                    val_embeddings=val, val_labels=val_labels,
                    verifiers={"cosine": {"val": pairs(val, val_labels), "test": pairs(test, test_labels)}})


def _check_metrics(where: str, value: Any, path: str, out_dir: Path) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _check_metrics(where, item, f"{path}.{key}" if path else key, out_dir)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_metrics(where, item, f"{path}[{i}]", out_dir)
    elif isinstance(value, str):
        if not (out_dir / value).is_file():
            raise AssertionError(f"{where}: {path} is the string {value!r}, which names no file it "
                                 "wrote to out_dir; metrics are numbers")
    elif not isinstance(value, (int, float)):
        raise AssertionError(f"{where}: {path} is {value!r}; metrics must be int, float or bool")
    elif not math.isfinite(value):
        raise AssertionError(f"{where}: {path} is {value} on separable writers with validation "
                             "pairs; expected a finite number")


def check_evaluator(evaluator: Any, params: Mapping[str, Any] | None = None, *,
                    data: Any = None, seed: int = 0) -> None:
    """An evaluator declares known ``requires`` and returns the same finite metrics every time.

    It runs through :func:`hvkit.evaluation.evaluate` (which computes what ``requires``
    names) on ``data`` (default :func:`evaluation_data`) with a temporary ``out_dir``.
    The result must be a dict of int, float and bool values (nested dicts and lists allowed;
    a string must name a file written to ``out_dir``), finite, and equal on two runs
    without ``out_dir``. On
    bare data (test embeddings only, no ``out_dir``) it returns such a dict or raises ValueError.
    """
    import dataclasses
    import tempfile

    from hvkit.evaluation import REQUIREMENTS, evaluate

    built, where = _build("evaluator", evaluator, params)
    requires = getattr(built, "requires", None)
    if not isinstance(requires, frozenset) or not requires <= set(REQUIREMENTS):
        raise AssertionError(f"{where}: requires is {requires!r}; declare a frozenset of "
                             f"{', '.join(sorted(REQUIREMENTS))}")
    data = evaluation_data(seed) if data is None else data

    def run(on: Any, edge: bool = False) -> Any:
        try:
            return evaluate({"it": built}, on)["it"]
        except Exception as exc:
            if edge and isinstance(exc, ValueError):
                return None
            raise AssertionError(f"{where}: it raised {type(exc).__name__}: {exc}") from exc

    with tempfile.TemporaryDirectory() as tmp:
        first = run(dataclasses.replace(data, out_dir=Path(tmp)))
        if not isinstance(first, dict):
            raise AssertionError(f"{where}: returned {type(first).__name__}, expected a dict of metrics")
        _check_metrics(where, first, "", Path(tmp))
    plain = dataclasses.replace(data, out_dir=None)
    if run(plain) != run(plain):
        raise AssertionError(f"{where}: two runs on the same data gave different metrics; seed "
                             "any randomness")
    bare = dataclasses.replace(data, val_embeddings=None, val_labels=None, verifiers={}, out_dir=None,
                               reference_embeddings=None, reference_labels=None)
    result = run(bare, edge=True)
    if result is not None and not isinstance(result, dict):
        raise AssertionError(f"{where}: on bare data returned {type(result).__name__}, expected a dict")


# --- backbones, heads, transforms -------------------------------------------------------------

def _check_module(where: str, module: Any, x: torch.Tensor, dim_attr: str) -> None:
    dim = getattr(module, dim_attr, None)
    if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
        raise AssertionError(f"{where}: {dim_attr} is {dim!r}; expose it as a positive int")
    if not isinstance(module, nn.Module):
        raise AssertionError(f"{where}: built {type(module).__name__}, expected a torch.nn.Module")
    module.eval()
    try:
        with torch.no_grad():
            out = module(x)
            single = module(x[:1])
    except Exception as exc:
        raise AssertionError(f"{where}: forward on a {tuple(x.shape)} batch raised "
                             f"{type(exc).__name__}: {exc}") from exc
    expected = (x.shape[0], dim)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != expected:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AssertionError(f"{where}: mapped input {tuple(x.shape)} to {shape}, expected "
                             f"{expected} ({dim_attr}={dim})")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{where}: the output is not finite")
    if not torch.allclose(single, out[:1], rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{where}: in eval mode a sample's output depends on the rest of "
                             "its batch")
    module.train()
    xg = _leaf(x)
    module(xg).square().mean().backward()
    if xg.grad is None or not torch.isfinite(xg.grad).all():
        raise AssertionError(f"{where}: no finite gradient reaches the input")
    trainable = [p for p in module.parameters() if p.requires_grad]
    if trainable and all(p.grad is None for p in trainable):
        raise AssertionError(f"{where}: none of its trainable parameters gets a gradient")


def check_backbone(backbone: Any, params: Mapping[str, Any] | None = None, *,
                   in_channels: Sequence[int] = (1, 3), image_size: int = 64,
                   batch_size: int = 4, seed: int = 0) -> None:
    """A backbone maps (B, C, H, W) images in [0, 1] to (B, ``embedding_dim``) features, for each C.

    Outputs are finite, a sample's features do not depend on its batch in eval mode, and
    the gradient reaches the images and the parameters.
    """
    for channels in in_channels:
        built, where = _build("backbone", backbone, params, in_channels=channels)
        x = torch.rand(batch_size, channels, image_size, image_size, generator=_generator(seed))
        _check_module(f"{where} with {channels} channel(s)", built, x, "embedding_dim")


def check_head(head: Any, params: Mapping[str, Any] | None = None, *, in_dim: int = 16,
               batch_size: int = 4, seed: int = 0) -> None:
    """A head maps (B, ``in_dim``) to (B, ``out_dim``): finite, per sample in eval mode, differentiable.

    A pair verifier (``pair_verifier = True``) maps two (B, ``in_dim``) batches to logits
    (B, 2) or scores (B,), per pair, and the same pair scores the same in either batch; one
    that scores pairs within their set (``score_pairs(embeddings, first, second)``, API 1.10)
    returns finite (P,) scores that do not depend on the order of the set's rows.
    """
    built, where = _build("head", head, params, in_dim=in_dim)
    x = torch.randn(batch_size, in_dim, generator=_generator(seed))
    if getattr(built, "pair_verifier", False):
        _check_pair_verifier(where, built, x, torch.randn(batch_size, in_dim, generator=_generator(seed + 1)))
    else:
        _check_module(where, built, x, "out_dim")


def _check_pair_verifier(where: str, module: Any, a: torch.Tensor, b: torch.Tensor) -> None:
    if not isinstance(module, nn.Module):
        raise AssertionError(f"{where}: built {type(module).__name__}, expected a torch.nn.Module")
    if hasattr(module, "fit"):
        writers = torch.arange(a.shape[0])
        module.fit(torch.cat([a, b]), torch.cat([writers, writers]), torch.cat([a, b, a - b]))
    module.eval()
    if hasattr(module, "score_pairs"):
        _check_set_verifier(where, module, torch.cat([a, b]))
        return
    try:
        with torch.no_grad():
            out, single = module(a, b), module(a[:1], b[:1])
    except Exception as exc:
        raise AssertionError(f"{where}: forward(e1, e2) on {tuple(a.shape)} batches raised "
                             f"{type(exc).__name__}: {exc}") from exc
    shapes = [(a.shape[0], 2), (a.shape[0],)]
    if not isinstance(out, torch.Tensor) or tuple(out.shape) not in shapes:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise AssertionError(f"{where}: a pair verifier returned {shape}; expected logits {shapes[0]} "
                             f"or scores {shapes[1]}")
    if not torch.isfinite(out).all():
        raise AssertionError(f"{where}: the output is not finite")
    if not torch.allclose(single, out[:1], rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{where}: in eval mode a pair's score depends on the rest of its batch")
    trainable = [p for p in module.parameters() if p.requires_grad]
    if trainable:
        module.train()
        module(a, b).square().mean().backward()
        if all(p.grad is None for p in trainable):
            raise AssertionError(f"{where}: no gradient reaches its trainable parameters")


def _check_set_verifier(where: str, module: Any, rows: torch.Tensor) -> None:
    half = len(rows) // 2
    first, second = np.arange(half), np.arange(half, 2 * half)
    try:
        scores = np.asarray(module.score_pairs(rows, first, second))
    except Exception as exc:
        raise AssertionError(f"{where}: score_pairs on a set of {len(rows)} rows raised "
                             f"{type(exc).__name__}: {exc}") from exc
    if scores.shape != (half,) or not np.isfinite(scores).all():
        raise AssertionError(f"{where}: score_pairs returned {scores.dtype} {scores.shape}; expected {half} "
                             "finite scores")
    order = np.random.default_rng(0).permutation(len(rows))
    moved = np.argsort(order)
    again = np.asarray(module.score_pairs(rows[torch.as_tensor(order)], moved[first], moved[second]))
    if not np.allclose(again, scores, rtol=1e-4, atol=1e-5):
        raise AssertionError(f"{where}: a pair's score depends on the order of the rows of its set")


def check_transform(transform: Any, params: Mapping[str, Any] | None = None, *,
                    channels: Sequence[int] = (1, 3), image_size: int = 32, batch_size: int = 4,
                    seed: int = 0, random: bool = True) -> None:
    """A transform keeps a batch's shape, dtype and [0, 1] range and draws randomness only from its generator.

    The input is left unchanged; the same generator seed gives the same output whatever
    the global torch seed; with ``random`` another seed gives another output.
    """
    built, where = _build("transform", transform, params)
    if not callable(built):
        raise AssertionError(f"{where}: built {type(built).__name__}, which is not callable")
    for c in channels:
        case = f"{where} on {c} channel(s)"
        x = torch.rand(batch_size, c, image_size, image_size, generator=_generator(seed))
        kept = x.clone()
        torch.manual_seed(seed + 1)
        try:
            out = built(x, _generator(seed))
        except Exception as exc:
            raise AssertionError(f"{case}: it raised {type(exc).__name__}: {exc}") from exc
        if not torch.equal(x, kept):
            raise AssertionError(f"{case}: it modified its input in place")
        if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype:
            got = f"{tuple(out.shape)} {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
            raise AssertionError(f"{case}: returned {got} for {tuple(x.shape)} {x.dtype}; keep "
                                 "the batch's shape and dtype")
        if not torch.isfinite(out).all() or out.min() < 0 or out.max() > 1:
            raise AssertionError(f"{case}: values leave [0, 1] (min {out.min().item():.4g}, "
                                 f"max {out.max().item():.4g}); clamp them")
        torch.manual_seed(seed + 2)
        if not torch.equal(built(x, _generator(seed)), out):
            raise AssertionError(f"{case}: the same generator seed gave another output; draw all "
                                 "randomness from the generator argument, not global state")
        if random and torch.equal(built(x, _generator(seed + 1)), out):
            raise AssertionError(f"{case}: generator seeds {seed} and {seed + 1} gave the same "
                                 "output; pass random=False for a deterministic transform")


# --- recipes ------------------------------------------------------------------------------------

def run_recipe_text(text: str, directory: Path, name: str = "recipe") -> Path:
    """Run the recipe ``text`` (YAML) quietly on the CPU: a plugin's end-to-end test inside hvkit's pipeline.

    Writes ``directory/<name>.yaml`` and runs it into ``directory/<name>``, which it returns.
    """
    from hvkit.pipeline import run

    recipe = Path(directory) / f"{name}.yaml"
    recipe.write_text(text)
    return run(recipe, [], run_dir=Path(directory) / name, device="cpu", console=lambda _: None)


@contextlib.contextmanager
def failing_after_step(step: int) -> Iterator[None]:
    """Within it, a training stage that has taken ``step`` optimiser steps raises ``RuntimeError("injected
    failure")`` in the next, as a crash there would: a plugin's test that its stage resumes (``hvkit run
    --resume``) to the uninterrupted run's result, from the checkpoint before that step."""
    from hvkit.engine import Trainer

    one_step = Trainer._one_step

    def failing(self: Trainer, *args: Any) -> Any:
        if self.step == step:
            raise RuntimeError("injected failure")
        return one_step(self, *args)

    Trainer._one_step = failing
    try:
        yield
    finally:
        Trainer._one_step = one_step


def tiny_recipe(stages: str, *, name: str = "tiny", seed: int = 0, backbone: str = "small_cnn",
                writers: int = 12, samples_per_writer: int = 4, image_size: int | None = 32) -> str:
    """A recipe (YAML text) of ``stages`` on ``cedar_and``'s embedded synthetic writers, for :func:`run_recipe_text`.

    ``stages`` is the YAML of the ``stages:`` mapping at any common indentation: it is dedented
    and placed under ``stages:``. A ``ValueError`` says when the result is not valid YAML or
    does not read as stage names each mapped to its settings (a line indented less than the first).
    ``backbone`` is a YAML value: a plugin name or a flow mapping such as
    ``"{name: vit, image_size: 32}"``. ``image_size=None`` keeps the dataset's default size.
    """
    size = "" if image_size is None else f", image_size: {image_size}"
    body = textwrap.indent(textwrap.dedent(stages).strip("\n"), "  ")
    text = (f"name: {name}\nseed: {seed}\n"
            f"data: {{name: cedar_and, synthetic_writers: {writers}, "
            f"synthetic_samples_per_writer: {samples_per_writer}{size}}}\n"
            f"model: {{backbone: {backbone}}}\nstages:\n{body}\n")
    hint = "give the stages one common indentation and each stage's settings a deeper one"
    try:
        parsed = yaml.safe_load(text)["stages"]
    except yaml.YAMLError as exc:
        raise ValueError(f"tiny_recipe: the recipe is not valid YAML ({getattr(exc, 'problem', exc)}); "
                         f"{hint}") from None
    if not isinstance(parsed, dict) or not parsed or not all(isinstance(v, dict) for v in parsed.values()):
        raise ValueError(f"tiny_recipe: stages read as {parsed!r}, not stage names each mapped to "
                         f"its settings; {hint}")
    return text
