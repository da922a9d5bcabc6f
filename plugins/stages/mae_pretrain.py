"""Masked-autoencoder pre-training of a ViT (MAE: He, Chen, Xie, Li, Dollár & Girshick, CVPR 2022).

Each image is cut into L patches of p x p pixels (row by row); per sample, uniform noise
u ~ U(0, 1)^L is argsorted and the patches of the first ``n_keep = floor(L (1 - r))``
ranks stay visible (mask ratio r, the paper's 0.75). The ViT encodes the class token and
the visible patches only, with their position embeddings. A light decoder embeds its
tokens to ``decoder_dim``, puts them back in patch order with a learnt mask token at every
masked position (the un-shuffling), adds fixed 2-D sine-cosine position embeddings
(:func:`sincos_position_embedding`, zero for the class token), runs pre-norm transformer
blocks and a LayerNorm and predicts each patch's p^2 C pixels linearly. The loss is the
mean squared error on the masked patches only:

    L = sum_i m_i mean_k (x̂_ik - t_ik)^2 / sum_i m_i,

m_i = 1 for a masked patch, t_i the patch's pixels, with ``norm_pix_loss`` (the paper's
default) normalised per patch: ``t_i = (x_i - mean(x_i)) / sqrt(var(x_i) + 1e-6)``, the
unbiased variance over the patch's pixels, as the official code.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock

from hvkit import distributed
from hvkit.api import Component
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.backbones.vit import sincos_position_embedding, with_class_token
from hvkit_plugins.stages.batches import check_image_sampler, epoch_batches, image_sampler, split_images
from hvkit_plugins.stages.encoder import Encoder, save_encoder, to_float
from hvkit_plugins.stages.monitor import stage_monitor


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images (B, C, H, W) -> patches (B, L, p^2 C): patches row by row, each its pixels row by row, channels last."""
    b, c, h, w = images.shape
    p = patch_size
    x = images.reshape(b, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // p) * (w // p), p * p * c)


def random_masking(noise: torch.Tensor, n_keep: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-sample masking from ``noise`` (B, L): the visible patches ``keep`` (B, n_keep), in rank order,
    ``restore`` (B, L), the rank of each patch, and ``mask`` (B, L), 1 for a masked patch, 0 for a visible one.
    """
    shuffle = noise.argsort(dim=1)
    restore = shuffle.argsort(dim=1)
    return shuffle[:, :n_keep], restore, (restore >= n_keep).to(noise.dtype)


def unshuffle(visible: torch.Tensor, mask_token: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    """The full sequence (B, L, d) in patch order: ``visible`` (B, n_keep, d) where kept, ``mask_token`` elsewhere."""
    b, n_keep, d = visible.shape
    full = torch.cat([visible, mask_token.expand(b, restore.shape[1] - n_keep, d)], dim=1)
    return full.gather(1, restore.unsqueeze(-1).expand(-1, -1, d))


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True,
             eps: float = 1e-6) -> torch.Tensor:
    """Mean over the masked patches (``mask`` = 1) of the patch's mean squared error, targets normalised per patch
    (mean and unbiased variance of its pixels) with ``norm_pix``; ``pred`` and ``target`` (B, L, P)."""
    if norm_pix:
        target = (target - target.mean(dim=-1, keepdim=True)) / (target.var(dim=-1, keepdim=True) + eps).sqrt()
    per_patch = (pred - target).square().mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()


class MAEDecoder(nn.Module):
    """MAE's decoder: encoder tokens (B, 1 + n_keep, in_dim) -> each patch's pixels (B, L, patch_dim).

    A linear embedding to ``dim``, the mask token at the masked positions (:func:`unshuffle`),
    fixed sine-cosine position embeddings, ``layers`` of torchvision's pre-norm blocks
    (``heads`` heads, a GELU MLP of ``mlp_ratio`` x ``dim``), a LayerNorm and a linear
    prediction; the class token is dropped at the end. Initialised as the paper: Xavier-uniform
    linear weights with zero biases, the mask token normal with std 0.02.
    """

    def __init__(self, in_dim: int, patch_dim: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(heads, dim, round(mlp_ratio * dim), 0.0, 0.0)
                                      for _ in range(layers)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_dim)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, tokens: torch.Tensor, restore: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
        x = self.embed(tokens)
        x = torch.cat([x[:, :1], unshuffle(x[:, 1:], self.mask_token, restore)], dim=1)
        x = x + with_class_token(sincos_position_embedding(x.shape[-1], grid_h, grid_w)).to(x.device)
        return self.pred(self.norm(self.blocks(x)))[:, 1:]


class _MaskedAutoencoder(nn.Module):
    """The backbone's masked forward and the decoder, one module so DDP synchronises both."""

    def __init__(self, encoder: nn.Module, decoder: MAEDecoder):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder

    def forward(self, images: torch.Tensor, keep: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
        p = self.encoder.patch_size
        tokens = self.encoder.encode_tokens(images, keep)
        return self.decoder(tokens, restore, images.shape[-2] // p, images.shape[-1] // p)


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=10, optimizer={"name": "AdamW", "lr": 1e-3, "betas": [0.9, 0.95], "weight_decay": 0.05},
                       scheduler={"name": "CosineAnnealingLR", "warmup_steps": 20}, weight_decay_1d=False)


class MAEPretrain:
    """MAE pre-training: the ViT encodes a random quarter of each image's patches, a light decoder predicts the rest.

    ``backbone`` (default: the recipe's ``model.backbone``) must offer the masked forward
    ``encode_tokens(images, keep)`` and a ``patch_size``, as ``vit`` does. ``mask_ratio`` r
    (0.75) of each image's patches are masked afresh every step, drawn from the step's seeded
    generator, so a run replays and resumes exactly. The decoder (``decoder_dim``,
    ``decoder_layers``, ``decoder_heads``; the paper's 512-d, 8 blocks and 16 heads are for
    ViT-L, here 128-d, 2 blocks and 4 heads, 32 dimensions a head as the paper's, for the
    192-d ViT-Tiny) is trained with the encoder and dropped; the loss is the MSE on the masked
    patches (``norm_pix_loss``: per-patch normalised targets, the paper's default). The
    encoder's position embeddings are the backbone's: the paper's fixed sine-cosine ones with
    ``vit``'s ``position: sincos``, learnt ones with its default (``recipes/mae_cedar.yaml``'s:
    at its 160 steps the fixed ones outweigh the blank-heavy patches' content).
    The default optimiser is the paper's AdamW (betas 0.9, 0.95; weight decay 0.05, none on
    biases and norms) at a learning rate for short runs (1e-3, the paper's 1.5e-4 x batch / 256 is for
    800 epochs). The ViT is saved as this stage's
    ``encoder``, which later stages fine-tune or evaluate as any pre-trained backbone.
    """

    check_recipe = staticmethod(check_image_sampler)

    def __init__(self, backbone: Component["backbone"] | None = None,
                 mask_ratio: float = 0.75,
                 norm_pix_loss: bool = True,
                 decoder_dim: int = 128,
                 decoder_layers: int = 2,
                 decoder_heads: int = 4,
                 transform: Component["transform"] | None = None,
                 sampler: Component["sampler"] = "random",
                 splits: list[str] = ["train"],
                 batch_size: int = 128,
                 train: TrainConfig = _default_train()):
        if not 0 < mask_ratio < 1:
            raise ValueError(f"mae_pretrain: mask_ratio={mask_ratio} must lie strictly between 0 and 1; "
                             "the paper uses 0.75")
        if decoder_layers < 1 or decoder_heads < 1:
            raise ValueError(f"mae_pretrain: decoder_layers={decoder_layers} and decoder_heads={decoder_heads} "
                             "must be >= 1; the paper uses 8 and 16")
        if decoder_dim % 4 or decoder_dim % decoder_heads:
            raise ValueError(f"mae_pretrain: decoder_dim={decoder_dim} must be a multiple of 4 (sine-cosine "
                             f"positions) and of decoder_heads={decoder_heads}; the paper uses 512 with 16 heads")
        self.backbone, self.mask_ratio, self.norm_pix_loss = backbone, mask_ratio, norm_pix_loss
        self.decoder_dim, self.decoder_layers, self.decoder_heads = decoder_dim, decoder_layers, decoder_heads
        self.transform, self.sampler, self.splits = transform, sampler, splits
        self.batch_size, self.train = batch_size, train

    def run(self, ctx: StageContext) -> dict[str, Any]:
        images = split_images(ctx, self.splits)
        backbone_spec = self.backbone or ctx.recipe["model"]["backbone"]
        backbone = ctx.build_backbone(backbone_spec)
        if not hasattr(backbone, "encode_tokens") or not hasattr(backbone, "patch_size"):
            name = backbone_spec["name"] if isinstance(backbone_spec, dict) else backbone_spec
            raise ValueError(f"backbone {name!r} has no masked forward (encode_tokens, patch_size); "
                             "use a ViT backbone such as vit")
        channels, height, width = images.shape[1:]
        p = backbone.patch_size
        if height % p or width % p:
            raise ValueError(f"image size {height} x {width} is not a multiple of the backbone's patch_size={p}")
        length = (height // p) * (width // p)
        n_keep = int(length * (1 - self.mask_ratio))
        if not 0 < n_keep < length:
            raise ValueError(f"mask_ratio={self.mask_ratio} of {length} patches leaves {n_keep} visible; "
                             "at least one must be visible and one masked")
        if self.norm_pix_loss and p * p * channels < 2:
            raise ValueError("norm_pix_loss needs patches of 2 or more values; "
                             f"patch_size={p} with {channels} channel has 1")
        decoder = MAEDecoder(backbone.embedding_dim, p * p * channels, self.decoder_dim, self.decoder_layers,
                             self.decoder_heads).to(ctx.device)
        transform = ctx.build("transform", self.transform) if self.transform is not None else None
        sampler = image_sampler(ctx, self.sampler, len(images), self.batch_size)
        model = distributed.wrap(_MaskedAutoencoder(backbone, decoder), ctx.device, self.train.channels_last,
                                 self.train.sync_batchnorm)
        ctx.log(f"{len(images)} images of {length} patches, {n_keep} visible; "
                f"{len(sampler)} batches of {self.batch_size} per epoch")

        def step(index: list[int], generator: torch.Generator) -> torch.Tensor:
            x = to_float(images[torch.as_tensor(index)], ctx.device)
            if transform is not None:
                x = transform(x, generator)
            noise = torch.rand(x.shape[0], length, generator=generator, device=ctx.device)
            keep, restore, mask = random_masking(noise, n_keep)
            pred = model(x, keep, restore)
            with full_precision(ctx.device):
                return mae_loss(pred.float(), patchify(x.float(), p), mask, self.norm_pix_loss)

        trainer = Trainer(ctx, {"mae": model}, self.train, steps_per_epoch=len(sampler))
        last = trainer.fit(epoch_batches(sampler), step, monitor=stage_monitor(ctx, Encoder(backbone), self.train))
        path = save_encoder(ctx, Encoder(backbone), backbone_spec, None)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step}}
