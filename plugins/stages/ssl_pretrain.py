"""Self-supervised pre-training on two augmented views (VICReg, Barlow Twins, NT-Xent …)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from hvkit import distributed
from hvkit.api import Component
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.stages.encoder import Encoder, precise_batchnorm, save_encoder, to_float


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=10, optimizer={"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4},
                       scheduler={"name": "CosineAnnealingLR", "warmup_steps": 20})


def encode_views(model: torch.nn.Module, view_a: torch.Tensor, view_b: torch.Tensor,
                 joint: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Both views' outputs (float32): in one pass when ``joint`` (shared BatchNorm statistics), else one pass each."""
    if joint:
        z_a, z_b = model(torch.cat([view_a, view_b])).float().chunk(2)
        return z_a, z_b
    return model(view_a).float(), model(view_b).float()


def multi_view_loss(loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                    global_views: Sequence[torch.Tensor],
                    local_views: Sequence[torch.Tensor] = ()) -> torch.Tensor:
    """Multi-crop (Caron et al. 2020, SwAV): the mean view loss over the pairs of views that hold a global view.

    With global views g_1, g_2 and local views l_1 … l_k the pairs are (g_1, g_2) and each
    (g_i, l_j): ``L = (loss(g_1, g_2) + sum_ij loss(g_i, l_j)) / (1 + 2k)``; local views are
    never compared with each other. With no local view it is the two-view loss itself.
    """
    if len(global_views) != 2:
        raise ValueError(f"multi_view_loss: needs 2 global views, got {len(global_views)}")
    pairs = [tuple(global_views)] + [(g, v) for g in global_views for v in local_views]
    return torch.stack([loss_fn(a, b) for a, b in pairs]).mean()


class SSLPretrain:
    """Self-supervised pre-training: two views → backbone → expander → a view loss (default VICReg).

    Each batch of images (labels unused) is augmented twice by ``transform``; the views go
    through the backbone and the ``head`` (the VICReg expander by default) and the ``loss``
    compares the two views' outputs. With ``joint_views`` both views share one forward pass,
    so BatchNorm normalises them together; without it (VICReg's reference code) each view is
    its own pass with its own batch statistics. With ``local_views`` = k > 0 each image also
    gives k small views (multi-crop, Caron et al. 2020): ``local_transform`` (by default
    crops of 10-40% of the area, a letter or two of a word) resized to ``local_size`` pixels,
    all k in one more pass, each compared with both global views (:func:`multi_view_loss`) —
    local stroke style has to match the whole word, at ``k (local_size / size)^2`` extra
    image cost; BatchNorm's running statistics then average the global and the local passes,
    so ``precise_bn`` (re-estimate them on the clean training images after training,
    :func:`~hvkit_plugins.stages.encoder.precise_batchnorm`) matters there. The backbone (and
    head) are saved as this stage's ``encoder`` for later stages.
    """

    def __init__(self, loss: Component["loss"] = "vicreg",
                 head: Component["head"] = {"name": "mlp", "dims": [2048, 2048, 2048]},
                 transform: Component["transform"] = "handwriting_views",
                 sampler: Component["sampler"] = "random",
                 splits: list[str] = ["train"],
                 batch_size: int = 128,
                 backbone: Component["backbone"] | None = None,
                 joint_views: bool = True,
                 local_views: int = 0,
                 local_size: int = 32,
                 local_transform: Component["transform"] = {"name": "handwriting_views", "crop_scale": [0.1, 0.4]},
                 precise_bn: bool = False,
                 train: TrainConfig = _default_train()):
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a self-supervised loss")
        if local_views < 0 or local_size < 8:
            raise ValueError(f"local_views={local_views} must be >= 0 and local_size={local_size} >= 8 pixels")
        self.loss, self.head, self.transform, self.sampler = loss, head, transform, sampler
        self.splits, self.batch_size, self.backbone, self.train = splits, batch_size, backbone, train
        self.joint_views = joint_views
        self.local_views, self.local_size, self.local_transform = local_views, local_size, local_transform
        self.precise_bn = precise_bn

    def run(self, ctx: StageContext) -> dict[str, Any]:
        data = ctx.dataset
        missing = [s for s in self.splits if s not in data.splits]
        if missing:
            raise ValueError(f"stage {ctx.name}: dataset has no split {missing[0]!r} "
                             f"(has {', '.join(data.splits)})")
        images = torch.cat([data.splits[s].images for s in self.splits])
        backbone_spec = self.backbone or ctx.recipe["model"]["backbone"]
        backbone = ctx.build_backbone(backbone_spec)
        head = ctx.build("head", self.head, in_dim=backbone.embedding_dim).to(ctx.device)
        encoder = Encoder(backbone, head)
        loss_fn = ctx.build("loss", self.loss, embedding_dim=head.out_dim).to(ctx.device)
        transform = ctx.build("transform", self.transform)
        local_transform = ctx.build("transform", self.local_transform) if self.local_views else None
        sampler = ctx.build("sampler", self.sampler, labels=np.arange(len(images)),
                            batch_size=self.batch_size, seed=ctx.seed, rank=ctx.rank,
                            world_size=ctx.world_size)
        model = distributed.wrap(encoder, ctx.device)
        gathered = getattr(loss_fn, "needs_global_batch", False) and ctx.world_size > 1
        ctx.log(f"{len(images)} images, {len(sampler)} batches of {self.batch_size} per epoch")

        def batches(epoch: int):
            sampler.set_epoch(epoch)
            return iter(sampler)

        def step(index: list[int], generator: torch.Generator):
            x = to_float(images[torch.as_tensor(index)], ctx.device)
            views = list(encode_views(model, transform(x, generator), transform(x, generator), self.joint_views))
            local = []
            if local_transform is not None:
                with full_precision(ctx.device):  # autocast has no bfloat16 antialiased resize
                    small = torch.cat([F.interpolate(local_transform(x, generator), size=self.local_size,
                                                     mode="bilinear", antialias=True)
                                       for _ in range(self.local_views)])
                local = list(model(small).float().chunk(self.local_views))
            with full_precision(ctx.device):
                if gathered:
                    views, local = ([distributed.gather_with_grad(z) for z in zs] for zs in (views, local))
                return multi_view_loss(loss_fn, views, local)

        trainer = Trainer(ctx, {"encoder": model, "loss": loss_fn}, self.train,
                          steps_per_epoch=len(sampler), loss_modules=("loss",), global_batch=gathered)
        last = trainer.fit(batches, step)
        if self.precise_bn:
            precise_batchnorm(encoder, images, ctx.device)
        path = save_encoder(ctx, encoder, backbone_spec, self.head)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step}}
