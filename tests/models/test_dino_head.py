"""DINO head: MLP → L2-normalised bottleneck → weight-normalised prototypes, against the formula."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from hvkit.testing import check_head
from hvkit_plugins.heads import DINOHead


@pytest.mark.parametrize("params", [{"hidden_dim": 12, "bottleneck_dim": 6, "out_dim": 9},
                                    {"hidden_dim": 12, "bottleneck_dim": 6, "out_dim": 9, "batch_norm": True},
                                    {"hidden_dim": 12, "bottleneck_dim": 6, "out_dim": 9, "norm_last_layer": False},
                                    {"bottleneck_dim": 6, "out_dim": 9, "layers": 1}])
def test_contract(params: dict) -> None:
    check_head(DINOHead, params, in_dim=16)


def test_defaults_are_the_papers_but_k() -> None:
    head = DINOHead(in_dim=512)
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert [m.out_features for m in head.mlp if isinstance(m, nn.Linear)] == [2048, 2048, 256]
    assert head.prototypes.shape == (4096, 256) and head.out_dim == 4096 and head.scale is None
    kinds = [type(m).__name__ for m in DINOHead(in_dim=8, hidden_dim=4, bottleneck_dim=3, batch_norm=True).mlp]
    assert kinds == ["Linear", "BatchNorm1d", "GELU", "Linear", "BatchNorm1d", "GELU", "Linear"]


def _gelu(v: float) -> float:
    return 0.5 * v * (1 + math.erf(v / math.sqrt(2)))


def test_values_are_cosines_with_the_prototypes() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=4, out_dim=5, hidden_dim=3, bottleneck_dim=2, layers=2).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    first, _, last = head.mlp
    out = head(x)
    for i, row in enumerate(x.tolist()):
        hidden = [_gelu(sum(w * v for w, v in zip(ws, row)) + b)
                  for ws, b in zip(first.weight.tolist(), first.bias.tolist())]
        z = [sum(w * v for w, v in zip(ws, hidden)) + b for ws, b in zip(last.weight.tolist(), last.bias.tolist())]
        for k, proto in enumerate(head.prototypes.tolist()):
            cosine = sum(a * b for a, b in zip(z, proto)) / math.sqrt(sum(a * a for a in z) * sum(b * b for b in proto))
            assert out[i, k].item() == pytest.approx(cosine, rel=1e-10, abs=1e-12)
    assert out.abs().max() <= 1


def test_weight_normalisation_ignores_a_prototypes_length_unless_scales_are_learnt() -> None:
    torch.manual_seed(0)
    head = DINOHead(in_dim=4, out_dim=5, hidden_dim=3, bottleneck_dim=2).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    before = head(x)
    with torch.no_grad():
        head.prototypes[2].mul_(7.0)
    torch.testing.assert_close(head(x), before)
    free = DINOHead(in_dim=4, out_dim=5, hidden_dim=3, bottleneck_dim=2, norm_last_layer=False).double()
    free.load_state_dict(head.state_dict() | {"scale": torch.ones(5, dtype=torch.float64)})
    torch.testing.assert_close(free(x), before)  # g starts at 1
    with torch.no_grad():
        free.scale.copy_(torch.arange(1.0, 6.0))
    torch.testing.assert_close(free(x), before * torch.arange(1.0, 6.0, dtype=torch.float64))
    free(x).sum().backward()
    assert free.scale.grad is not None and free.prototypes.grad is not None


def test_errors() -> None:
    with pytest.raises(ValueError, match="^dino_head: layers must be at least 1"):
        DINOHead(in_dim=4, layers=0)
    with pytest.raises(ValueError, match="^dino_head: .*out_dim=0"):
        DINOHead(in_dim=4, out_dim=0)
