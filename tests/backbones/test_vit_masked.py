"""The ViT's masked forward (MAE): the visible patches and the class token through the normal forward's weights."""

from __future__ import annotations

import pytest
import torch

from hvkit_plugins.backbones.vit import ViT, resize_position_embedding, sincos_position_embedding

TINY = {"image_size": 16, "patch_size": 4, "hidden_dim": 32, "layers": 2, "heads": 4}
POSITIONS = pytest.mark.parametrize("position", ["learned", "sincos"])


def _positions(vit: ViT, grid_h: int, grid_w: int) -> torch.Tensor:
    """(1, 1 + n, D): the learnt embeddings (resized), or a zero class-token row and the fixed sine-cosine ones."""
    if vit.position == "learned":
        position = vit.net.encoder.pos_embedding
        return torch.cat([position[:, :1], resize_position_embedding(position[:, 1:], grid_h, grid_w)], dim=1)
    fixed = sincos_position_embedding(vit.embedding_dim, grid_h, grid_w).to(vit.net.class_token.dtype)
    return torch.cat([torch.zeros_like(fixed[:1]), fixed])[None]


def _full_sequence(vit: ViT, images: torch.Tensor) -> torch.Tensor:
    """The normal forward's token sequence, written out step by step as vit.py computed it before encode_tokens."""
    tokens = vit.net.conv_proj(images)
    grid_h, grid_w = tokens.shape[-2:]
    tokens = tokens.flatten(2).transpose(1, 2)
    tokens = torch.cat([vit.net.class_token.expand(tokens.shape[0], -1, -1), tokens], dim=1)
    position = _positions(vit, grid_h, grid_w)
    encoder = vit.net.encoder
    return encoder.ln(encoder.layers(encoder.dropout(tokens + position)))


def _vit(**kwargs) -> ViT:
    torch.manual_seed(0)
    vit = ViT(**{**TINY, **kwargs}).eval()
    with torch.no_grad():  # torchvision starts the class token at zero: make it count
        vit.net.class_token.normal_()
    return vit


@POSITIONS
def test_every_patch_kept_is_the_normal_forwards_sequence_bit_for_bit(position: str) -> None:
    vit = _vit(position=position)
    for shape in [(3, 1, 16, 16), (2, 1, 8, 16), (2, 1, 12, 8)]:  # its own grid, and other (non-square) ones
        x = torch.rand(*shape)
        full = _full_sequence(vit, x)
        n = full.shape[1] - 1
        assert torch.equal(vit.encode_tokens(x), full)
        assert torch.equal(vit.encode_tokens(x, torch.arange(n).expand(shape[0], n)), full)
        assert torch.equal(vit(x), full[:, 0])


@POSITIONS
def test_the_normal_forward_is_unchanged_in_float64_and_under_autocast(position: str) -> None:
    vit = _vit(in_channels=3, position=position).double()
    x = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    assert torch.equal(vit(x), _full_sequence(vit, x)[:, 0])
    vit = _vit(position=position).to(memory_format=torch.channels_last)
    x = torch.rand(2, 1, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(vit(x), _full_sequence(vit, x)[:, 0])


@POSITIONS
def test_kept_patches_carry_their_own_positions_in_any_order(position: str) -> None:
    vit = _vit(position=position)
    x = torch.rand(2, 1, 16, 16)
    full = _full_sequence(vit, x)
    order = torch.stack([torch.randperm(16, generator=torch.Generator().manual_seed(s)) for s in range(2)])
    out = vit.encode_tokens(x, order)
    torch.testing.assert_close(out[:, 0], full[:, 0])  # attention is blind to the order
    for b in range(2):
        torch.testing.assert_close(out[b, 1:], full[b, 1 + order[b]])


@POSITIONS
def test_a_subset_equals_the_blocks_on_those_tokens_alone(position: str) -> None:
    vit = _vit(position=position)
    x = torch.rand(2, 1, 16, 16)
    keep = torch.tensor([[5, 0, 11, 3], [15, 14, 2, 7]])
    position = _positions(vit, 4, 4)[0]
    patches = vit.net.conv_proj(x).flatten(2).transpose(1, 2)
    for b in range(2):
        tokens = [vit.net.class_token[0, 0] + position[0]] + [patches[b, j] + position[1 + j] for j in keep[b]]
        encoder = vit.net.encoder
        expected = encoder.ln(encoder.layers(torch.stack(tokens)[None]))[0]
        torch.testing.assert_close(vit.encode_tokens(x, keep)[b], expected)


def test_the_masked_forward_trains_the_normal_forwards_weights() -> None:
    vit = _vit().train()
    names = set(dict(vit.named_parameters()))
    vit.encode_tokens(torch.rand(2, 1, 16, 16), torch.tensor([[1, 2], [3, 4]])).square().sum().backward()
    assert set(dict(vit.named_parameters())) == names
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in vit.parameters()), \
        [n for n, p in vit.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    grad = vit.net.encoder.pos_embedding.grad[0]
    assert grad[[2, 3, 4, 5]].abs().sum(1).gt(0).all() and grad[[6, 7, 8]].abs().sum() == 0  # hidden patches
