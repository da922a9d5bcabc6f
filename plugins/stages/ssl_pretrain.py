"""Self-supervised pre-training on two augmented views (VICReg, Barlow Twins, NT-Xent …)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hvkit import distributed
from hvkit.api import Component
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.stages.encoder import Encoder, save_encoder, to_float


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


class SSLPretrain:
    """Self-supervised pre-training: two views → backbone → expander → a view loss (default VICReg).

    Each batch of images (labels unused) is augmented twice by ``transform``; the views go
    through the backbone and the ``head`` (the VICReg expander by default) and the ``loss``
    compares the two views' outputs. With ``joint_views`` both views share one forward pass,
    so BatchNorm normalises them together; without it (VICReg's reference code) each view is
    its own pass with its own batch statistics. The backbone (and head) are saved
    as this stage's ``encoder`` for later stages.
    """

    def __init__(self, loss: Component["loss"] = "vicreg",
                 head: Component["head"] = {"name": "mlp", "dims": [2048, 2048, 2048]},
                 transform: Component["transform"] = "handwriting_views",
                 sampler: Component["sampler"] = "random",
                 splits: list[str] = ["train"],
                 batch_size: int = 128,
                 backbone: Component["backbone"] | None = None,
                 joint_views: bool = True,
                 train: TrainConfig = _default_train()):
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2 for a self-supervised loss")
        self.loss, self.head, self.transform, self.sampler = loss, head, transform, sampler
        self.splits, self.batch_size, self.backbone, self.train = splits, batch_size, backbone, train
        self.joint_views = joint_views

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
            z_a, z_b = encode_views(model, transform(x, generator), transform(x, generator), self.joint_views)
            with full_precision(ctx.device):
                if gathered:
                    z_a, z_b = distributed.gather_with_grad(z_a), distributed.gather_with_grad(z_b)
                return loss_fn(z_a, z_b)

        trainer = Trainer(ctx, {"encoder": model, "loss": loss_fn}, self.train,
                          steps_per_epoch=len(sampler), loss_modules=("loss",), global_batch=gathered)
        last = trainer.fit(batches, step)
        path = save_encoder(ctx, encoder, backbone_spec, self.head)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step}}
