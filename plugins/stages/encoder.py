"""The trained encoder a stage hands to later stages: save, load, embed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from hvkit.api import WriterDataset
from hvkit.engine import StageContext, load_checkpoint, save_checkpoint
from hvkit.engine.context import build
from hvkit.registry import Registry
from hvkit_plugins.stages.test_views import TestViews

ENCODER_FILE = "encoder.pt"


class Encoder(nn.Module):
    """Backbone, optionally followed by a projection head; ``features`` picks which output embeds.

    ``features="head_and_map"`` returns ``(head output, feature map)`` from one pass: the
    backbone's ``feature_map`` and its ``pool`` (a backbone that offers them), so a loss on
    local features (VICRegL) is still one forward call of the (DDP-wrapped) encoder.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: torch.Tensor,
                features: str = "head") -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if features == "head_and_map":
            maps = self.backbone.feature_map(images)
            out = self.backbone.pool(maps)
            return (self.head(out) if self.head is not None else out), maps
        out = self.backbone(images)
        if features == "head" and self.head is not None:
            out = self.head(out)
        return out


def to_float(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B,C,H,W) → float in [0, 1] on ``device``."""
    return images.to(device, non_blocking=True).float().div_(255.0)


def input_format(dataset: WriterDataset) -> dict[str, Any]:
    """How a dataset's images were read (``in_channels``, ``image_size``, ``keep_aspect``): what an image file
    must be turned into before a model of it, or its hand-crafted features, can score it."""
    height, width = (int(s) for s in dataset.splits["train"].images.shape[-2:])
    return {"in_channels": int(dataset.splits["train"].images.shape[1]),
            "image_size": height if height == width else [height, width],
            "keep_aspect": bool(dataset.info.get("keep_aspect", False))}


def save_encoder(ctx: StageContext, encoder: Encoder, backbone_spec: dict, head_spec: dict | None) -> str:
    """Write the encoder's weights and specs into the stage directory; returns the relative path."""
    path = ctx.stage_dir / ENCODER_FILE
    if ctx.is_main:
        save_checkpoint(path, {
            "backbone_spec": backbone_spec, "head_spec": head_spec, **input_format(ctx.dataset),
            "backbone": encoder.backbone.state_dict(),
            "head": encoder.head.state_dict() if encoder.head is not None else None,
        })
    return ctx.relative(path)


def load_encoder(path: Path, registry: Registry, device: torch.device) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder saved by :func:`save_encoder`; returns it (eval mode) and its stored state."""
    state = load_checkpoint(path, device)
    backbone = build(registry, "backbone", state["backbone_spec"], in_channels=state["in_channels"])
    backbone.load_state_dict(state["backbone"])
    head = None
    if state["head_spec"] is not None:
        head = build(registry, "head", state["head_spec"], in_dim=backbone.embedding_dim)
        head.load_state_dict(state["head"])
    return Encoder(backbone, head).to(device).eval(), state


def load_stage_encoder(ctx: StageContext, stage: str) -> tuple[Encoder, dict[str, Any]]:
    """The encoder an earlier ``stage`` saved, as :func:`load_encoder`, checked against this stage's data.

    A stage with data of its own (another collection) must read images of as many channels as
    the encoder was trained on; their size may differ (a CNN pools any size).
    """
    encoder, state = load_encoder(ctx.output_path(stage, "encoder"), ctx.registry, ctx.device)
    channels = int(ctx.dataset.splits["train"].images.shape[1])
    if int(state["in_channels"]) != channels:
        raise ValueError(f"the encoder of stage {stage!r} reads {state['in_channels']}-channel images, but this "
                         f"stage's data ({ctx.dataset.name}) has {channels}; give the data channels: "
                         f"{state['in_channels']}")
    return encoder, state


@torch.no_grad()
def embed(encoder: nn.Module, images: torch.Tensor, device: torch.device, features: str = "backbone",
          batch_size: int = 256, views: TestViews | None = None) -> torch.Tensor:
    """Embeddings (N, D) float32 on the CPU of uint8 images, in eval mode, in batches.

    With ``views`` each embedding is the mean over the image and its test-time views
    (:class:`~hvkit_plugins.stages.test_views.TestViews`).
    """
    was_training = encoder.training
    encoder.eval()
    parts = []
    step = max(1, batch_size // views.count) if views is not None else batch_size  # ~batch_size images a pass
    for start in range(0, images.shape[0], step):
        x = to_float(images[start:start + step], device)
        out = encoder(x if views is None else views.apply(x), features).float()
        parts.append((out if views is None else views.average(out)).cpu())
    encoder.train(was_training)
    if not parts:
        return torch.empty(0, 0)
    return torch.cat(parts)


@torch.no_grad()
def precise_batchnorm(encoder: nn.Module, images: torch.Tensor, device: torch.device,
                      batch_size: int = 256, seed: int = 0) -> None:
    """Re-estimate every BatchNorm's running statistics on ``images`` (precise BN, Wu & Johnson 2021).

    Training leaves running statistics averaged over augmented views (and, with multi-crop,
    over small crops too) with an exponential decay; this resets them and sets each to the
    equally weighted mean of the batch statistics of one train-mode pass over ``images`` in
    shuffled batches of ``batch_size`` (order drawn from ``seed``; unbiased batch variances, as
    BatchNorm keeps). Weights are untouched.
    """
    norms = [m for m in encoder.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    was_training = encoder.training
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    encoder.train()
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))
    for index in order.split(batch_size):
        encoder(to_float(images[index], device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    encoder.train(was_training)
