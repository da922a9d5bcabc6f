"""cosine_matrix, the proxy and classifier losses' (B, C) cosines: each of its four paths (each side normalised first or
its lengths divided out after) against a float64 loop and F.normalize, batched and Gram forms, zero rows, and the
losses on its dividing paths against PML."""

from __future__ import annotations

import math
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses

from hvkit_plugins.losses._classifier import cosine_matrix
from hvkit_plugins.losses.normalized_softmax import NormalizedSoftmaxLoss
from hvkit_plugins.losses.p2sgrad import P2SGradLoss
from hvkit_plugins.losses.proxy_anchor import ProxyAnchorLoss
from hvkit_plugins.losses.proxy_nca import ProxyNCALoss
from hvkit_plugins.losses.soft_triple import SoftTripleLoss

from .pair_batch import CLASSES, LABELS, assert_same_value_and_gradients, batch

# (B, C, D): both sides normalised first (D <= B, C); both divided after (D > B, C); rows normalised and columns
# divided (C >= D > B); rows divided and columns normalised (B >= D > C)
PATHS = [(12, 7, 6), (12, 7, 32), (4, 20, 8), (20, 4, 8)]


def _normalised_first(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    return F.normalize(rows, dim=-1) @ F.normalize(columns, dim=-1).mT


def _weighted(rows: torch.Tensor, columns: torch.Tensor,
              form: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """A scalar of every entry of ``form(rows, columns)``: their sum under fixed random weights."""
    value = form(rows, columns)
    return (value * torch.randn(value.shape, generator=torch.Generator().manual_seed(0), dtype=value.dtype)).sum()


def _loop_reference(rows: torch.Tensor, columns: torch.Tensor) -> list[list[float]]:
    """Each cosine as sum(a b) / sqrt(sum(a^2) sum(b^2)), in Python floats."""
    a, b = rows.detach().double().tolist(), columns.detach().double().tolist()
    return [[sum(p * q for p, q in zip(r, c)) / math.sqrt(sum(p * p for p in r) * sum(q * q for q in c)) for c in b]
            for r in a]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("b", "c", "d"), PATHS)
def test_each_path_equals_normalising_first_in_value_and_gradient(dtype, b, c, d):
    rows, columns = batch(b, d, dtype, seed=1), batch(c, d, dtype, seed=2)
    assert_same_value_and_gradients(_weighted(rows, columns, cosine_matrix), _weighted(rows, columns, _normalised_first),
                                    (rows, columns))


@pytest.mark.parametrize(("b", "c", "d"), PATHS)
def test_each_path_equals_the_loop_in_float64(b, c, d):
    rows, columns = batch(b, d, seed=3), batch(c, d, seed=4)
    expected = torch.tensor(_loop_reference(rows, columns), dtype=torch.float64)
    torch.testing.assert_close(cosine_matrix(rows, columns), expected, rtol=1e-13, atol=1e-14)


def test_hand_computed_case():
    rows = torch.tensor([[3.0, 4.0], [0.0, 2.0]], dtype=torch.float64)
    columns = torch.tensor([[1.0, 0.0], [-5.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    expected = torch.tensor([[0.6, -0.6, 0.7 / math.sqrt(2) * 2], [0.0, 0.0, 1 / math.sqrt(2)]], dtype=torch.float64)
    for r, c in [(rows, columns), (rows.repeat(1, 4), columns.repeat(1, 4))]:  # D 2: normalised first; D 8: divided
        torch.testing.assert_close(cosine_matrix(r, c), expected, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(("groups", "k", "d"), [(5, 3, 8), (5, 10, 4)])
def test_batched_and_gram_forms(groups, k, d):
    centres = batch(groups * k, d, seed=5).view(groups, k, d)
    assert_same_value_and_gradients(_weighted(centres, centres, cosine_matrix),
                                    _weighted(centres, centres, _normalised_first), (centres,))
    other = batch(groups * 2, d, seed=6).view(groups, 2, d)
    assert_same_value_and_gradients(_weighted(centres, other, cosine_matrix),
                                    _weighted(centres, other, _normalised_first), (centres, other))


@pytest.mark.parametrize(("b", "c", "d"), PATHS)
def test_a_zero_row_has_cosine_zero_and_the_gradient_of_f_normalize(b, c, d):
    rows, columns = batch(b, d, seed=7).detach(), batch(c, d, seed=8).detach()
    rows[1], columns[0] = 0, 0
    rows.requires_grad_(), columns.requires_grad_()
    value = cosine_matrix(rows, columns)
    assert (value[1] == 0).all() and (value[:, 0] == 0).all()
    assert_same_value_and_gradients(_weighted(rows, columns, cosine_matrix),
                                    _weighted(rows, columns, _normalised_first), (rows, columns))


@pytest.mark.parametrize(("b", "c", "d"), PATHS)
def test_gradcheck(b, c, d):
    assert torch.autograd.gradcheck(cosine_matrix, (batch(b, d, seed=9), batch(c, d, seed=10)))


@pytest.mark.parametrize(("b", "c", "d", "normalised"), [(12, 7, 6, 2), (12, 7, 32, 0), (4, 20, 8, 1), (20, 4, 8, 1),
                                                         (12, 8, 8, 2)])
def test_a_side_is_normalised_first_only_when_its_dimension_is_at_most_the_other_count(monkeypatch, b, c, d,
                                                                                        normalised):
    calls = []
    normalize = F.normalize
    monkeypatch.setattr(F, "normalize", lambda x, *args, **kwargs: calls.append(x.shape) or normalize(x, *args, **kwargs))
    cosine_matrix(torch.randn(b, d), torch.randn(c, d))
    assert len(calls) == normalised


def _proxy_anchor(d: int, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], torch.Tensor]:
    ours = ProxyAnchorLoss(d, CLASSES).to(dtype)
    pml = pml_losses.ProxyAnchorLoss(num_classes=CLASSES, embedding_size=d).to(dtype)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml, pml.proxies


def _proxy_nca(d: int, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], torch.Tensor]:
    ours = ProxyNCALoss(d, CLASSES).to(dtype)
    pml = pml_losses.ProxyNCALoss(num_classes=CLASSES, embedding_size=d, softmax_scale=9).to(dtype)
    pml.proxies.data.copy_(ours.proxies.data)
    return ours, pml, pml.proxies


def _normalized_softmax(d: int, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable[..., torch.Tensor],
                                                             torch.Tensor]:
    ours = NormalizedSoftmaxLoss(d, CLASSES).to(dtype)
    pml = pml_losses.NormalizedSoftmaxLoss(num_classes=CLASSES, embedding_size=d).to(dtype)
    pml.W.data.copy_(ours.weight.data.T)
    return ours, pml, pml.W


def _soft_triple(d: int, dtype: torch.dtype) -> tuple[torch.nn.Module, Callable[..., torch.Tensor], torch.Tensor]:
    ours = SoftTripleLoss(d, CLASSES, tau=0.0).to(dtype)
    pml = pml_losses.SoftTripleLoss(num_classes=CLASSES, embedding_size=d).to(dtype)
    pml.fc.data.copy_(ours.proxies.data.T)
    return ours, pml, pml.fc


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("make", [_proxy_anchor, _proxy_nca, _normalized_softmax, _soft_triple])
def test_the_losses_on_the_dividing_paths_equal_pml(make, dtype):
    """D 32 > B 12 > C 7: both lengths divided out (SoftTriple's 70 centres: embeddings normalised, centres divided)."""
    torch.manual_seed(0)
    ours, pml, pml_weight = make(32, dtype)
    x = batch(12, 32, dtype, seed=11)
    value, expected = ours(x, LABELS), pml(x, LABELS)
    torch.testing.assert_close(value, expected)
    mine = torch.autograd.grad(value, [x, *ours.parameters()])
    theirs = torch.autograd.grad(expected, [x, pml_weight])
    torch.testing.assert_close(mine[0], theirs[0])
    torch.testing.assert_close(mine[1], theirs[1].T if theirs[1].shape != mine[1].shape else theirs[1])


def test_p2sgrad_on_the_dividing_path_equals_pml_in_value_and_embedding_gradient():
    torch.manual_seed(0)
    ours = P2SGradLoss(32, CLASSES).double()
    pml = pml_losses.P2SGradLoss(descriptors_dim=32, num_classes=CLASSES).double()
    pml.weight.data.copy_(ours.proxies.data.T)
    x = batch(12, 32, seed=12)
    value, expected = ours(x, LABELS), pml(x, LABELS)
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(torch.autograd.grad(value, x)[0], torch.autograd.grad(expected, x)[0])
