"""ViT backbones: torchvision equivalence, channels, position embeddings resized for other image sizes or fixed."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torchvision.models.vision_transformer import VisionTransformer

from hvkit.engine import TrainConfig
from hvkit.engine.trainer import parameter_groups
from hvkit.testing import check_backbone
from hvkit_plugins.backbones.vit import ViT, ViTSmall, resize_position_embedding, sincos_position_embedding

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


# --- position: sincos (MAE, MoCo v3) -------------------------------------------------------------------------------

def _loop_sincos(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """float64, entry by entry: patch (i, j), row by row, gets sin(j w_k), cos(j w_k), sin(i w_k), cos(i w_k)
    in the four quarters, w_k = 10000^(-k / (dim / 4)) (MAE's get_2d_sincos_pos_embed)."""
    quarter = dim // 4
    table = []
    for i in range(grid_h):
        for j in range(grid_w):
            row = [0.0] * dim
            for k in range(quarter):
                omega = 10000.0 ** (-k / quarter)
                row[k], row[quarter + k] = math.sin(j * omega), math.cos(j * omega)
                row[2 * quarter + k], row[3 * quarter + k] = math.sin(i * omega), math.cos(i * omega)
            table.append(row)
    return torch.tensor(table, dtype=torch.float64)


def _sincos_vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    vit = ViT(**{**TINY, "position": "sincos", **kwargs}).eval()
    with torch.no_grad():  # torchvision starts the class token at zero: make it count
        vit.net.class_token.normal_()
    return vit


def _ref_sincos_tokens(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """float64, written out: each patch plus the loop's embedding, the class token plus zero, blocks, final norm."""
    vit = copy.deepcopy(vit).double()
    grid = vit.net.conv_proj(images.double())
    patches = grid.flatten(2).transpose(1, 2) + _loop_sincos(vit.embedding_dim, *grid.shape[-2:])
    first = vit.net.class_token.expand(patches.shape[0], -1, -1)
    encoder = vit.net.encoder
    return encoder.ln(encoder.layers(torch.cat([first, patches], dim=1)))


@pytest.mark.parametrize("dim, grid_h, grid_w", [(4, 1, 1), (4, 2, 3), (8, 3, 2), (32, 4, 4), (192, 8, 5)])
def test_sincos_embedding_matches_the_float64_loop(dim: int, grid_h: int, grid_w: int) -> None:
    ours = sincos_position_embedding(dim, grid_h, grid_w)
    assert ours.dtype == torch.float32 and ours.shape == (grid_h * grid_w, dim)
    torch.testing.assert_close(ours.double(), _loop_sincos(dim, grid_h, grid_w), rtol=0, atol=1e-7)


@pytest.mark.parametrize("shape", [(3, 1, 16, 16), (2, 1, 8, 16), (2, 1, 12, 8)])  # its own grid, non-square ones
def test_sincos_forward_matches_the_float64_reference_on_any_grid(shape: tuple[int, ...]) -> None:
    vit = _sincos_vit()
    x = torch.rand(*shape)
    expected = _ref_sincos_tokens(vit, x)
    tokens = vit.encode_tokens(x)
    torch.testing.assert_close(tokens.double(), expected, rtol=1e-4, atol=1e-5)
    assert torch.equal(vit(x), tokens[:, 0])


def test_sincos_class_token_gets_zero() -> None:
    vit = _sincos_vit()
    alone = vit.encode_tokens(torch.rand(2, 1, 16, 16), torch.empty(2, 0, dtype=torch.long))
    encoder = vit.net.encoder
    expected = encoder.ln(encoder.layers(vit.net.class_token))  # the class token with no position added
    torch.testing.assert_close(alone, expected.expand(2, -1, -1), rtol=0, atol=1e-6)


def test_sincos_positions_matter_where_the_learnt_ones_zeroed_do_not() -> None:
    x = torch.rand(2, 1, 16, 16)
    # the same patches, rotated 180 degrees on the 4 x 4 grid (rows and columns of patches reversed)
    moved = x.reshape(2, 1, 4, 4, 4, 4).flip(2, 4).reshape(2, 1, 16, 16)
    blind = ViT(**TINY).eval()
    with torch.no_grad():
        blind.net.encoder.pos_embedding.zero_()
    torch.testing.assert_close(blind(moved), blind(x))  # attention alone cannot see where a patch is
    vit = _sincos_vit()
    assert (vit(moved) - vit(x)).abs().amax() > 1e-2


def _optimised(vit: ViT) -> list[torch.Tensor]:
    """Every tensor the trainer hands the optimiser, decayed or not (``train.weight_decay_1d: false``)."""
    groups = parameter_groups({"backbone": vit}, TrainConfig(weight_decay_1d=False), ())
    return [p for group in groups for p in group["params"]]


def test_sincos_positions_are_neither_parameters_nor_state() -> None:
    learned, fixed = ViT(**TINY), ViT(**TINY, position="sincos")
    learnt = learned.net.encoder.pos_embedding
    assert learnt.requires_grad and any(p is learnt for p in _optimised(learned))  # decayed, as DINO's code
    names = set(dict(fixed.named_parameters()))
    assert names == set(dict(learned.named_parameters())) - {"net.encoder.pos_embedding"}
    assert set(fixed.state_dict()) == names  # the fixed buffer is not saved
    buffers = list(fixed.buffers())
    assert buffers and not any(b.requires_grad for b in buffers)
    assert len(_optimised(fixed)) == len(names) == len(_optimised(learned)) - 1
    fixed.train()
    fixed.encode_tokens(torch.rand(2, 1, 16, 16)).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in fixed.parameters())
    assert {b.dtype for b in fixed.double().buffers()} == {torch.float64}  # follows the model


def test_sincos_contract_and_state_dict_round_trip() -> None:
    check_backbone(ViT, {**TINY, "position": "sincos"}, in_channels=(1, 3), image_size=16, batch_size=2)
    check_backbone(ViTSmall, {**TINY, "position": "sincos", "pool": "mean"}, in_channels=(1,), image_size=16,
                   batch_size=2)
    saved = _sincos_vit()
    buffer = io.BytesIO()
    torch.save(saved.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    loaded = ViT(**TINY, position="sincos").eval()
    loaded.load_state_dict(torch.load(buffer))  # strict: nothing missing, nothing unexpected
    x = torch.rand(2, 1, 8, 16)
    assert torch.equal(loaded(x), saved(x))
    with pytest.raises(RuntimeError, match="pos_embedding"):  # a learnt checkpoint is another model
        loaded.load_state_dict(ViT(**TINY).state_dict())


@pytest.mark.parametrize("backbone", [ViT, ViTSmall])
def test_position_must_be_learned_or_sincos(backbone: type) -> None:
    with pytest.raises(ValueError, match=r"vit: position='fixed' must be 'learned' \(ViT, DINO\) or 'sincos'"):
        backbone(**TINY, position="fixed")
    with pytest.raises(ValueError, match="vit: position='sincos' needs hidden_dim=6 to be a multiple of 4"):
        backbone(**{**TINY, "hidden_dim": 6, "heads": 2}, position="sincos")
    assert ViT().position == ViTSmall().position == "learned"
