"""ViT backbones: torchvision equivalence, channels, position embeddings resized for other image sizes."""

from __future__ import annotations

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from hvkit.testing import check_backbone
from hvkit_plugins.backbones.vit import ViT, ViTSmall, resize_position_embedding

TINY = {"image_size": 16, "patch_size": 4, "hidden_dim": 32, "layers": 2, "heads": 4}


def test_contract() -> None:
    check_backbone(ViT, TINY, in_channels=(1, 3), image_size=16, batch_size=2)


def test_equals_torchvision_without_heads_at_its_image_size() -> None:
    torch.manual_seed(0)
    reference = VisionTransformer(image_size=16, patch_size=4, num_layers=2, num_heads=4, hidden_dim=32,
                                  mlp_dim=128).eval()
    ours = ViT(in_channels=3, **TINY).eval()
    ours.net.load_state_dict({k: v for k, v in reference.state_dict().items() if not k.startswith("heads.")})
    reference.heads = torch.nn.Identity()
    x = torch.rand(3, 3, 16, 16)
    torch.testing.assert_close(ours(x), reference(x))
    assert ours.embedding_dim == 32 == ours(x).shape[1]


def test_presets_and_channels() -> None:
    tiny, small = ViT(), ViTSmall()
    assert (tiny.embedding_dim, len(tiny.net.encoder.layers), tiny.net.encoder.layers[0].num_heads) == (192, 12, 3)
    assert (small.embedding_dim, len(small.net.encoder.layers), small.net.encoder.layers[0].num_heads) == (384, 12, 6)
    assert tiny.net.conv_proj.weight.shape == (192, 1, 8, 8)
    assert tiny.net.encoder.pos_embedding.shape == (1, 1 + 8 * 8, 192)


def test_resize_position_embedding_keeps_the_grid_layout() -> None:
    rows, cols = torch.meshgrid(torch.arange(4.0), torch.arange(4.0), indexing="ij")
    grid = (10 * rows + cols).reshape(1, 16, 1).double()  # embedding of patch (r, c) = 10 r + c
    assert resize_position_embedding(grid, 4, 4) is grid
    wider = resize_position_embedding(grid, 4, 8).reshape(4, 8)
    # only the width is resampled: every row is row 0 shifted by 10 r, and row 0 rises with the column
    torch.testing.assert_close(wider - wider[:1], 10 * torch.arange(4.0).double()[:, None].expand(4, 8))
    assert (wider[0].diff() > 0).all()
    constant = resize_position_embedding(torch.full((1, 16, 3), 0.5), 2, 6)
    torch.testing.assert_close(constant, torch.full((1, 12, 3), 0.5))


def test_other_image_sizes_use_the_resized_position_embeddings() -> None:
    torch.manual_seed(0)
    big = ViT(**TINY).eval()
    small = ViT(**{**TINY, "image_size": 8}).eval()
    state = big.net.state_dict()
    position = state["encoder.pos_embedding"]
    state["encoder.pos_embedding"] = torch.cat([position[:, :1], resize_position_embedding(position[:, 1:], 2, 2)], 1)
    small.net.load_state_dict(state)
    x = torch.rand(2, 1, 8, 8)
    torch.testing.assert_close(big(x), small(x))
    assert big(torch.rand(2, 1, 8, 16)).shape == (2, 32)


def test_sizes_must_fit_the_patches() -> None:
    with pytest.raises(ValueError, match="vit: image_size=30 is not a multiple of patch_size=8"):
        ViT(image_size=30)
    with pytest.raises(ValueError, match="vit: hidden_dim=30 must be divisible by heads=4"):
        ViT(hidden_dim=30, heads=4)
    with pytest.raises(ValueError, match="vit: image size 16 x 18 is not a multiple of patch_size=4"):
        ViT(**TINY)(torch.rand(1, 1, 16, 18))
