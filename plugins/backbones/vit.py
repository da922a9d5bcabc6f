"""Vision Transformers (torchvision's blocks) for small grey images, at any input size."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer


def sincos_position_embedding(dim: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embeddings (grid_h * grid_w, dim), patches row by row (MAE / MoCo v3).

    With omega_k = 10000^(-k / (dim/4)), k = 0 … dim/4 - 1, the patch in row i, column j gets
    ``[sin(j omega), cos(j omega), sin(i omega), cos(i omega)]``: the first half encodes the
    column, the second the row, as MAE's official code. Computed in float64, returned in float32.
    """
    if dim % 4:
        raise ValueError(f"sincos_position_embedding: dim={dim} must be a multiple of 4")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    parts = []
    for coordinate in (cols, rows):
        angle = coordinate.reshape(-1, 1) * omega
        parts += [angle.sin(), angle.cos()]
    return torch.cat(parts, dim=1).float()


def resize_position_embedding(grid: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch position embeddings (1, n*n, D) learnt on an n x n grid, bicubically resized to (1, height*width, D).

    As DINO does for its multi-crop views (Caron et al. 2021): the embeddings are laid out on
    their grid and interpolated like an image; the same grid comes back unchanged.
    """
    side = math.isqrt(grid.shape[1])
    if (height, width) == (side, side):
        return grid
    image = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
    resized = F.interpolate(image.float(), size=(height, width), mode="bicubic", align_corners=False)
    return resized.to(grid.dtype).flatten(2).transpose(1, 2)


def with_class_token(patches: torch.Tensor) -> torch.Tensor:
    """Patch position embeddings (n, D) -> (1, 1 + n, D), the class token's zero row first, as MAE's ``pos_embed``."""
    return torch.cat([patches.new_zeros(1, patches.shape[1]), patches])[None]


class ViT(nn.Module):
    """Vision Transformer (Dosovitskiy et al., ICLR 2021): images (B, in_channels, H, W) -> (B, hidden_dim).

    The image is cut into ``patch_size`` squares, each linearly embedded, a learnt class token
    prepended and position embeddings added; ``layers`` pre-norm transformer blocks
    (``heads`` attention heads, a GELU MLP of ``mlp_ratio`` x ``hidden_dim``, no dropout) and a
    final LayerNorm follow. ``pool`` picks the feature: ``cls``, the class token's output;
    ``mean``, the average of the patch tokens' block outputs, then the final LayerNorm — MAE's
    ``global_pool`` (He et al. 2022, official ``models_vit.py``: average, then ``fc_norm``), whose
    class token saw only the decoder during pre-training; the official code starts a fresh
    ``fc_norm`` where this reuses the trained final norm, so every weight stays in use and a
    ``cls`` checkpoint loads unchanged. torchvision's
    ``VisionTransformer`` with ``weights=None`` and its initialisation; the patch embedding takes
    ``in_channels``. Defaults are ViT-Tiny (DeiT-Ti, Touvron et al. 2021: 192-d, 12 blocks,
    3 heads) with 8-pixel patches, 64 tokens for a 64 x 64 word. ``position``: ``learned``
    (ViT, DINO) learns the embeddings for ``image_size`` and bicubically resizes them for any
    other size whose sides are multiples of the patch (:func:`resize_position_embedding`), so
    DINO's smaller multi-crop views and a different evaluation size need no other model;
    ``sincos`` fixes them, as MAE (He et al. 2022) and MoCo v3 (Chen, Xie & He 2021): the patch
    in row i, column j of whatever grid the image gives gets
    ``[sin(j omega), cos(j omega), sin(i omega), cos(i omega)]``,
    omega_k = 10000^(-k / (hidden_dim/4)) (:func:`sincos_position_embedding`; ``hidden_dim`` a
    multiple of 4), the class token zero. They are neither parameters (no gradient, no weight
    decay) nor in the state dict: a non-persistent buffer keeps the ``image_size`` grid's on the
    model's device and dtype, another grid's are computed when met. Without BatchNorm a sample's
    features never depend on its batch. Train it as DINO's code with ``train.weight_decay_1d:
    false``: biases and LayerNorm scales without weight decay (the class token and learnt
    position embeddings, 3-d, are decayed there too).
    """

    def __init__(self, in_channels: int = 1, image_size: int = 64, patch_size: int = 8, hidden_dim: int = 192,
                 layers: int = 12, heads: int = 3, mlp_ratio: float = 4.0, pool: str = "cls",
                 position: Literal["learned", "sincos"] = "learned"):
        super().__init__()
        if pool not in ("cls", "mean"):
            raise ValueError(f"vit: pool={pool!r} must be 'cls' (ViT, DINO) or 'mean' (MAE's global_pool)")
        if position not in ("learned", "sincos"):
            raise ValueError(f"vit: position={position!r} must be 'learned' (ViT, DINO) or 'sincos' "
                             "(MAE, MoCo v3)")
        if position == "sincos" and hidden_dim % 4:
            raise ValueError(f"vit: position='sincos' needs hidden_dim={hidden_dim} to be a multiple of 4")
        if in_channels < 1:
            raise ValueError(f"vit: in_channels must be >= 1, got {in_channels}")
        if layers < 1 or heads < 1 or patch_size < 1:
            raise ValueError(f"vit: layers={layers}, heads={heads} and patch_size={patch_size} must all be >= 1")
        if image_size % patch_size:
            raise ValueError(f"vit: image_size={image_size} is not a multiple of patch_size={patch_size}")
        if hidden_dim % heads:
            raise ValueError(f"vit: hidden_dim={hidden_dim} must be divisible by heads={heads}")
        net = VisionTransformer(image_size=image_size, patch_size=patch_size, num_layers=layers, num_heads=heads,
                                hidden_dim=hidden_dim, mlp_dim=round(mlp_ratio * hidden_dim))
        if in_channels != 3:
            net.conv_proj = nn.Conv2d(in_channels, hidden_dim, kernel_size=patch_size, stride=patch_size)
            fan_in = in_channels * patch_size * patch_size
            nn.init.trunc_normal_(net.conv_proj.weight, std=math.sqrt(1 / fan_in))  # as torchvision
            nn.init.zeros_(net.conv_proj.bias)
        net.heads = nn.Identity()
        self.net = net
        self.patch_size = patch_size
        self.embedding_dim = hidden_dim
        self.pool = pool
        self.position = position
        self.grid_size = image_size // patch_size
        if position == "sincos":
            del net.encoder.pos_embedding
            self.register_buffer("sincos_embedding", with_class_token(
                sincos_position_embedding(hidden_dim, self.grid_size, self.grid_size)), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self.pool == "cls":
            return self.encode_tokens(images)[:, 0]
        return self.net.encoder.ln(self._blocks(images)[:, 1:].mean(dim=1))

    def encode_tokens(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """The output token sequence (B, 1 + n, D), the class token first, of the patches ``keep`` (B, n) names.

        The masked forward of MAE (He et al. 2022): each image's patches (numbered row by row)
        are embedded with their position embeddings, only the ``keep`` ones (in that order)
        join the class token through the blocks; every weight is the normal forward's, and
        ``keep=None`` (every patch) is its sequence, whose first token is the ``cls`` feature.
        """
        return self.net.encoder.ln(self._blocks(images, keep))

    def _blocks(self, images: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        """:meth:`encode_tokens` before the final LayerNorm."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"vit: image size {height} x {width} is not a multiple of patch_size={self.patch_size}")
        tokens = self.net.conv_proj(images)
        position = self._position_embedding(*tokens.shape[-2:])
        patches = tokens.flatten(2).transpose(1, 2) + position[:, 1:]
        if keep is not None:
            patches = patches.gather(1, keep.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))
        first = (self.net.class_token + position[:, :1]).expand(patches.shape[0], -1, -1)
        encoder = self.net.encoder
        return encoder.layers(encoder.dropout(torch.cat([first, patches], dim=1)))

    def _position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, D) of a grid_h x grid_w patch grid, the class token's first."""
        if self.position == "learned":
            learnt = self.net.encoder.pos_embedding
            return torch.cat([learnt[:, :1], resize_position_embedding(learnt[:, 1:], grid_h, grid_w)], dim=1)
        if (grid_h, grid_w) == (self.grid_size, self.grid_size):
            return self.sincos_embedding
        fixed = sincos_position_embedding(self.embedding_dim, grid_h, grid_w)
        return with_class_token(fixed).to(self.sincos_embedding)


class ViTSmall(ViT):
    """ViT-Small (DeiT-S: 384-d, 12 blocks, 6 heads), DINO's smallest model; the rest as ``vit``."""

    def __init__(self, in_channels: int = 1, image_size: int = 64, patch_size: int = 8, hidden_dim: int = 384,
                 layers: int = 12, heads: int = 6, mlp_ratio: float = 4.0, pool: str = "cls",
                 position: Literal["learned", "sincos"] = "learned"):
        super().__init__(in_channels, image_size, patch_size, hidden_dim, layers, heads, mlp_ratio, pool, position)
