"""The concat backbone: members centred, normalised and side by side; cosine = mean of the members'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hvkit.engine.context import build
from hvkit.registry import get_registry
from hvkit.testing import check_backbone
from hvkit_plugins.backbones.concat import Concat
from hvkit_plugins.backbones.small_cnn import SmallCNN


class _Linear(nn.Module):
    """A backbone that flattens and maps linearly: features known in closed form."""

    def __init__(self, dim: int, seed: int):
        super().__init__()
        self.map = nn.Linear(16, dim)
        nn.init.normal_(self.map.weight, generator=torch.Generator().manual_seed(seed))
        self.embedding_dim = dim

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.map(images.flatten(1))


def test_contract() -> None:
    check_backbone(Concat, {"members": ["small_cnn", {"name": "small_cnn", "embedding_dim": 8}]},
                   in_channels=(1, 3), image_size=32, batch_size=3)


def test_each_member_is_centred_normalised_and_concatenated() -> None:
    a, b = _Linear(3, 0), _Linear(5, 1)
    fused = Concat([a, b])
    fused.means.copy_(torch.arange(8.0) / 10)
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    out = fused(x)
    expected = torch.cat([F.normalize(a(x) - fused.means[:3], dim=1), F.normalize(b(x) - fused.means[3:], dim=1)], 1)
    torch.testing.assert_close(out, expected)
    assert fused.embedding_dim == 8 and fused.dims == [3, 5]
    torch.testing.assert_close(out.norm(dim=1), torch.full((6,), 2.0 ** 0.5))


def test_fused_cosine_is_the_mean_of_the_members_cosines_in_float64() -> None:
    members = [_Linear(d, s).double() for s, d in enumerate((4, 7, 2))]
    fused = Concat(members).double()
    fused.means.normal_(generator=torch.Generator().manual_seed(3))
    x, y = (torch.rand(5, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(s)) for s in (4, 5))
    means = fused.means.split(fused.dims)
    expected = sum(F.cosine_similarity(m(x) - mu, m(y) - mu) for m, mu in zip(members, means)) / 3
    got = F.cosine_similarity(fused(x), fused(y))
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_built_from_nested_specs_with_the_context() -> None:
    fused = build(get_registry(), "backbone", {"name": "concat", "members": [
        {"name": "small_cnn", "embedding_dim": 6, "width": 4, "depth": 2}, {"name": "small_cnn", "embedding_dim": 10}]},
        in_channels=3)
    assert all(isinstance(m, SmallCNN) for m in fused.members) and fused.embedding_dim == 16
    assert fused.members[0].features[0].in_channels == 3 and fused.means.shape == (16,)
    assert "means" in fused.state_dict()


def test_needs_two_members() -> None:
    with pytest.raises(ValueError, match="at least two backbones"):
        Concat([_Linear(3, 0)])
