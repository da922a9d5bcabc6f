"""Heads: mlp (VICReg expander), linear, normalize and the SSL-HV pair head."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hvkit.testing import check_head
from hvkit_plugins.heads import MLP, Linear, Normalize, SSLHVPairHead


@pytest.mark.parametrize("factory, params", [(MLP, {"dims": (32, 32, 8)}), (MLP, {"dims": (8,), "last_bn": True}),
                                             (Linear, {"out_dim": 5}), (Normalize, {})])
def test_contract(factory: type, params: dict) -> None:
    check_head(factory, params, in_dim=16)


def test_mlp_is_the_vicreg_expander_by_default() -> None:
    head = MLP(in_dim=512)
    kinds = [type(m).__name__ for m in head.layers]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert [m.out_features for m in head.layers if isinstance(m, nn.Linear)] == [2048, 2048, 2048]
    assert head.out_dim == 2048 and head(torch.randn(4, 512)).shape == (4, 2048)


def test_mlp_values_match_the_formula() -> None:
    torch.manual_seed(0)
    head = MLP(in_dim=6, dims=(5, 3), last_bn=True).double().train()
    x = torch.randn(7, 6, dtype=torch.float64)
    l1, bn1, _, l2, bn2 = head.layers

    def bn(z: torch.Tensor, layer: nn.BatchNorm1d) -> torch.Tensor:
        z = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + layer.eps)
        return z * layer.weight + layer.bias if layer.affine else z

    expect = bn(torch.relu(bn(x @ l1.weight.T + l1.bias, bn1)) @ l2.weight.T, bn2)
    assert l2.bias is None and not bn2.affine
    torch.testing.assert_close(head(x), expect)
    assert torch.autograd.gradcheck(head, (x.clone().requires_grad_(),))


def test_linear_and_normalize() -> None:
    x = torch.randn(5, 8, dtype=torch.float64)
    lin = Linear(in_dim=8, out_dim=3, bias=False).double()
    torch.testing.assert_close(lin(x), x @ lin.linear.weight.T)
    norm = Normalize(in_dim=8)
    torch.testing.assert_close(norm(x), x / x.norm(dim=1, keepdim=True))
    assert norm.out_dim == 8 and lin.out_dim == 3
    torch.testing.assert_close(norm(torch.zeros(2, 8)), torch.zeros(2, 8))  # eps: no NaN at 0


def test_sslhv_pair_head_formula_and_shape() -> None:
    torch.manual_seed(1)
    head = SSLHVPairHead(in_dim=6).double()
    assert head.out_dim == 2
    e1, e2 = torch.randn(3, 6, dtype=torch.float64), torch.randn(3, 6, dtype=torch.float64)
    w1 = head.project.weight
    _, l2, _, l3 = head.classify
    expect = torch.relu(torch.relu((e1 - e2) @ w1.T) @ l2.weight.T + l2.bias) @ l3.weight.T + l3.bias
    torch.testing.assert_close(head(e1, e2), expect)  # the projection bias cancels in the difference
    assert [m.out_features for m in (head.project, l2, l3)] == [64, 32, 2]
    assert torch.autograd.gradcheck(head, (e1.requires_grad_(), e2.requires_grad_()))


def test_sslhv_pair_head_invariances() -> None:
    torch.manual_seed(2)
    head = SSLHVPairHead(in_dim=10).double()
    e1, e2, c = (torch.randn(6, 10, dtype=torch.float64) for _ in range(3))
    torch.testing.assert_close(head(e1 + c, e2 + c), head(e1, e2))  # only the difference matters
    same = head(e1, e1)
    torch.testing.assert_close(same, same[:1].expand_as(same))  # f(e, e) is one constant
    assert not torch.allclose(head(e1, e2), head(e2, e1))  # signed: not symmetric
    sym = SSLHVPairHead(in_dim=10, difference="absolute").double()
    torch.testing.assert_close(sym(e1, e2), sym(e2, e1))
    torch.testing.assert_close(sym(e1 + c, e2 + c), sym(e1, e2))


@pytest.mark.parametrize("factory, kwargs", [(MLP, {"dims": ()}), (MLP, {"dims": (4, 0)}), (Linear, {"out_dim": 0}),
                                             (Normalize, {"eps": 0.0}), (SSLHVPairHead, {"hidden": ()}),
                                             (SSLHVPairHead, {"difference": "squared"})])
def test_invalid_settings(factory: type, kwargs: dict) -> None:
    with pytest.raises(ValueError):
        factory(**kwargs)
