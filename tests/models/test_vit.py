"""ViT backbones: torchvision equivalence, channels, position embeddings resized for other image sizes."""

from __future__ import annotations

import copy

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


# --- pool: mean (MAE's global_pool) ------------------------------------------------------------------------------

def _pre_norm_tokens(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """The blocks' output sequence (B, 1 + n, D) before the final LayerNorm, written out step by step."""
    grid = vit.net.conv_proj(images)
    patches = grid.flatten(2).transpose(1, 2)
    position = vit.net.encoder.pos_embedding
    first = (vit.net.class_token + position[:, :1]).expand(patches.shape[0], -1, -1)
    patches = patches + resize_position_embedding(position[:, 1:], *grid.shape[-2:])
    return vit.net.encoder.layers(torch.cat([first, patches], dim=1))


def _ref_mean_pool(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """float64: average the patch tokens one by one, then the final LayerNorm written out (official models_vit.py)."""
    vit = copy.deepcopy(vit).double()
    tokens = _pre_norm_tokens(vit, images.double())
    ln = vit.net.encoder.ln
    rows = []
    for sequence in tokens:
        total = torch.zeros(sequence.shape[-1], dtype=torch.float64)
        for token in sequence[1:]:
            total = total + token
        average = total / (len(sequence) - 1)
        centred = average - average.mean()
        rows.append(centred / (centred.square().mean() + ln.eps).sqrt() * ln.weight + ln.bias)
    return torch.stack(rows)


def _mean_vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    vit = ViT(**{**TINY, "pool": "mean", **kwargs}).eval()
    with torch.no_grad():  # make every weight count: a class token, a norm with its own scale and shift
        vit.net.class_token.normal_()
        vit.net.encoder.ln.weight.uniform_(0.5, 1.5)
        vit.net.encoder.ln.bias.normal_(std=0.3)
    return vit


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mean_pool_value_and_gradient_match_the_float64_loop_reference(dtype: torch.dtype) -> None:
    vit = _mean_vit().to(dtype)
    x = torch.rand(3, 1, 16, 16, dtype=dtype, requires_grad=True)
    weights = torch.randn(3, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ours = vit(x)
    (ours.double() * weights).sum().backward()
    x64 = x.detach().double().requires_grad_()
    expected = _ref_mean_pool(vit, x64)
    (expected * weights).sum().backward()
    tol = {} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-5}
    torch.testing.assert_close(ours.double(), expected, **tol)
    torch.testing.assert_close(x.grad.double(), x64.grad, **tol)


def test_mean_pool_normalises_after_averaging_as_the_official_code() -> None:
    vit = _mean_vit()
    with torch.no_grad():
        vit.net.encoder.ln.weight.fill_(1.0)
        vit.net.encoder.ln.bias.zero_()
    x = torch.rand(2, 1, 16, 16)
    features = vit(x)
    # each feature is a standardised vector (zero mean, unit variance over the channels) ...
    torch.testing.assert_close(features.mean(1), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(features.var(1, unbiased=False), torch.ones(2), atol=1e-4, rtol=0)
    # ... which the average of the normalised tokens (norm first, timm's default) is not
    normalised_first = vit.encode_tokens(x)[:, 1:].mean(1)
    assert (normalised_first.var(1, unbiased=False) < 0.99).all()
    assert not torch.allclose(features, normalised_first, atol=1e-2)


def test_mean_pool_by_hand_with_identical_tokens() -> None:
    # every patch identical and blind attention: each patch token is the same vector t, so the mean is t
    vit = _mean_vit()
    x = torch.full((1, 1, 16, 16), 0.5)
    with torch.no_grad():
        vit.net.encoder.pos_embedding.zero_()
    tokens = vit.encode_tokens(x)
    torch.testing.assert_close(vit(x), tokens[:, 1], rtol=1e-5, atol=1e-5)


def test_mean_pool_contract_other_sizes_and_cls_weights() -> None:
    check_backbone(ViT, {**TINY, "pool": "mean"}, in_channels=(1, 3), image_size=16, batch_size=2)
    check_backbone(ViTSmall, {**TINY, "pool": "mean"}, in_channels=(1,), image_size=16, batch_size=2)
    cls = _mean_vit()
    cls.pool = "cls"
    mean = ViT(**TINY, pool="mean").eval()
    mean.load_state_dict(cls.state_dict())  # the same weights: a cls checkpoint evaluates either way
    assert mean.state_dict().keys() == cls.state_dict().keys()
    x = torch.rand(2, 1, 8, 16)  # a resized grid
    torch.testing.assert_close(mean(x), _ref_mean_pool(mean, x).float(), rtol=1e-4, atol=1e-5)
    assert torch.equal(cls(x), cls.encode_tokens(x)[:, 0])
    assert ViT().pool == ViTSmall().pool == "cls"


def test_mean_pool_under_autocast_stays_close_to_float32() -> None:
    vit = _mean_vit()
    x = torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = vit(x)
    assert torch.isfinite(low).all()
    torch.testing.assert_close(low.float(), vit(x), rtol=0.1, atol=0.1)


@pytest.mark.parametrize("backbone", [ViT, ViTSmall])
def test_pool_must_be_cls_or_mean(backbone: type) -> None:
    with pytest.raises(ValueError, match=r"vit: pool='avg' must be 'cls' \(ViT, DINO\) or 'mean'"):
        backbone(**TINY, pool="avg")
