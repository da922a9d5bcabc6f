"""Supervised metric learning on labelled writers (from scratch or from a pre-trained encoder)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from hvkit import distributed
from hvkit.api import Component, StageOutput
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.stages.encoder import Encoder, load_encoder, save_encoder, to_float


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=20, optimizer={"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4},
                       scheduler={"name": "CosineAnnealingLR", "warmup_steps": 20})


class MetricTrain:
    """Metric learning with writer labels: backbone → head → L2-normalised embedding → loss.

    Uses the first ``label_fraction`` of the sorted training writers (the SSL-HV 10% rule).
    ``init_from`` names an earlier stage whose backbone to start from (``freeze_backbone``
    trains the head alone); without it the recipe's backbone trains from scratch, the
    supervised baseline. Batches come from ``sampler`` (P writers × K images by default);
    an optional ``miner`` picks the pairs the loss sees.
    """

    def __init__(self, loss: Component["loss"] = "multi_similarity",
                 miner: Component["miner"] | None = None,
                 sampler: Component["sampler"] = {"name": "pk", "samples_per_class": 4},
                 head: Component["head"] | None = {"name": "mlp", "dims": [512, 128]},
                 transform: Component["transform"] | None = "handwriting_views",
                 init_from: StageOutput | None = None,
                 freeze_backbone: bool = False,
                 label_fraction: float = 0.1,
                 normalize: bool = True,
                 batch_size: int = 64,
                 backbone: Component["backbone"] | None = None,
                 train: TrainConfig = _default_train()):
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        self.loss, self.miner, self.sampler, self.head = loss, miner, sampler, head
        self.transform, self.init_from, self.freeze_backbone = transform, init_from, freeze_backbone
        self.label_fraction, self.normalize, self.batch_size = label_fraction, normalize, batch_size
        self.backbone, self.train = backbone, train

    def run(self, ctx: StageContext) -> dict[str, Any]:
        split = labelled_writers(ctx.dataset.splits["train"], self.label_fraction)
        writers, labels = torch.unique(torch.as_tensor(split.labels), return_inverse=True)
        if self.init_from is not None:
            pretrained, state = load_encoder(ctx.output_path(self.init_from, "encoder"), ctx.registry, ctx.device)
            backbone, backbone_spec = pretrained.backbone, state["backbone_spec"]
        else:
            backbone_spec = self.backbone or ctx.recipe["model"]["backbone"]
            backbone = ctx.build_backbone(backbone_spec)
        backbone.requires_grad_(not self.freeze_backbone)
        head = (ctx.build("head", self.head, in_dim=backbone.embedding_dim).to(ctx.device)
                if self.head is not None else None)
        encoder = Encoder(backbone, head)
        dim = head.out_dim if head is not None else backbone.embedding_dim
        loss_fn = ctx.build("loss", self.loss, embedding_dim=dim, num_classes=len(writers)).to(ctx.device)
        miner = ctx.build("miner", self.miner) if self.miner is not None else None
        transform = ctx.build("transform", self.transform) if self.transform is not None else None
        sampler = ctx.build("sampler", self.sampler, labels=labels.numpy(), batch_size=self.batch_size,
                            seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size)
        model = distributed.wrap(encoder, ctx.device)
        gathered = (getattr(loss_fn, "needs_global_batch", False) or miner is not None) and ctx.world_size > 1
        labels_dev = labels.to(ctx.device)
        ctx.log(f"{len(writers)} labelled writers ({self.label_fraction:.0%}), {len(split)} images, "
                f"{len(sampler)} batches per epoch")

        def batches(epoch: int):
            sampler.set_epoch(epoch)
            return iter(sampler)

        def step(index: list[int], generator: torch.Generator):
            index_t = torch.as_tensor(index)
            if self.freeze_backbone:
                backbone.eval()
            x = to_float(split.images[index_t], ctx.device)
            if transform is not None:
                x = transform(x, generator)
            emb = model(x).float()
            y = labels_dev[index_t.to(ctx.device)]
            with full_precision(ctx.device):
                if self.normalize:
                    emb = F.normalize(emb, dim=1)
                if gathered:
                    emb, y = distributed.gather_with_grad(emb), distributed.gather(y)
                indices = miner(emb, y) if miner is not None else None
                return loss_fn(emb, y, indices)

        trainer = Trainer(ctx, {"encoder": model, "loss": loss_fn}, self.train,
                          steps_per_epoch=len(sampler), loss_modules=("loss",), global_batch=gathered)
        last = trainer.fit(batches, step)
        path = save_encoder(ctx, encoder, backbone_spec, self.head)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step,
                                             "labelled_writers": len(writers)}}
