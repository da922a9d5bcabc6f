"""Supervised metric learning on labelled writers (from scratch or from a pre-trained encoder)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from hvkit import distributed
from hvkit.api import Component, StageOutput
from hvkit.engine import StageContext, TrainConfig, Trainer, full_precision
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.stages.batches import sampler_batches
from hvkit_plugins.stages.encoder import Encoder, embed, load_stage_encoder, save_encoder, to_float
from hvkit_plugins.stages.monitor import stage_monitor


def _default_train() -> TrainConfig:
    return TrainConfig(epochs=20, optimizer={"name": "AdamW", "lr": 1e-3, "weight_decay": 1e-4},
                       scheduler={"name": "CosineAnnealingLR", "warmup_steps": 20})


class MetricTrain:
    """Metric learning with writer labels: backbone → head → L2-normalised embedding → loss.

    Uses the first ``label_fraction`` of the sorted training writers (the SSL-HV 10% rule).
    ``init_from`` names an earlier stage whose backbone to start from (``freeze_backbone``
    trains the head alone); without it the recipe's backbone trains from scratch, the
    supervised baseline. ``backbone`` together with ``init_from`` builds that backbone and
    loads the pre-trained weights into it — a variant with the same parameters, e.g. a
    ResNet-18 without its max-pool, fine-tuned at twice the feature resolution. Batches come
    from ``sampler`` (P writers × K images by default; a sampler that ``needs_embeddings``, such as
    ``hard_class``, is shown the encoder's embeddings of the labelled images, without augmentation,
    before every ``refresh_every``-th epoch); an optional ``miner`` picks the pairs the loss sees.
    ``normalize`` L2-normalises the embeddings before the loss, except for a loss that ``reads_norms``
    (AdaFace, whose margin follows the norm).

    ``unlabelled_loss`` (e.g. ``vicreg``) makes it semi-supervised, as S4L (Zhai et al.
    2019, "S4L: Self-Supervised Semi-Supervised Learning"): each step also draws
    ``unlabelled_batch_size`` images from *all* training writers (labels unused), makes two
    ``unlabelled_transform`` views, passes them through the same backbone and the
    ``init_from`` stage's head (the pre-training expander, trained on), and minimises
    L = L_metric + ``unlabelled_weight`` · L_view. The self-supervised term keeps the
    backbone's features general while the few labelled writers pull them toward writer
    identity.
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
                 unlabelled_loss: Component["loss"] | None = None,
                 unlabelled_weight: float = 1.0,
                 unlabelled_batch_size: int = 128,
                 unlabelled_transform: Component["transform"] = "handwriting_views",
                 train: TrainConfig = _default_train()):
        if not 0.0 < label_fraction <= 1.0:
            raise ValueError(f"label_fraction must be in (0, 1], got {label_fraction}")
        if unlabelled_loss is not None:
            if init_from is None:
                raise ValueError("unlabelled_loss needs init_from: the pre-training stage whose head "
                                 "(the expander) the self-supervised term trains on")
            if unlabelled_batch_size < 2:
                raise ValueError(f"unlabelled_batch_size must be at least 2, got {unlabelled_batch_size}")
        self.unlabelled_loss, self.unlabelled_weight = unlabelled_loss, unlabelled_weight
        self.unlabelled_batch_size, self.unlabelled_transform = unlabelled_batch_size, unlabelled_transform
        self.loss, self.miner, self.sampler, self.head = loss, miner, sampler, head
        self.transform, self.init_from, self.freeze_backbone = transform, init_from, freeze_backbone
        self.label_fraction, self.normalize, self.batch_size = label_fraction, normalize, batch_size
        self.backbone, self.train = backbone, train

    def run(self, ctx: StageContext) -> dict[str, Any]:
        split = labelled_writers(ctx.dataset.splits["train"], self.label_fraction)
        writers, labels = torch.unique(torch.as_tensor(split.labels), return_inverse=True)
        if self.init_from is not None:
            pretrained, state = load_stage_encoder(ctx, self.init_from)
            backbone, backbone_spec = pretrained.backbone, state["backbone_spec"]
            if self.backbone is not None:
                backbone_spec = self.backbone
                backbone = _transplant(ctx.build_backbone(backbone_spec), pretrained.backbone, self.init_from)
        else:
            backbone_spec = self.backbone or ctx.recipe["model"]["backbone"]
            backbone = ctx.build_backbone(backbone_spec)
        backbone.requires_grad_(not self.freeze_backbone)
        head = (ctx.build("head", self.head, in_dim=backbone.embedding_dim).to(ctx.device)
                if self.head is not None else None)
        encoder = Encoder(backbone, head)
        dim = head.out_dim if head is not None else backbone.embedding_dim
        unlabelled = self._unlabelled(ctx, pretrained.head if self.init_from is not None else None)
        loss_fn = ctx.build("loss", self.loss, embedding_dim=dim, num_classes=len(writers)).to(ctx.device)
        miner = ctx.build("miner", self.miner) if self.miner is not None else None
        transform = ctx.build("transform", self.transform) if self.transform is not None else None
        sampler = ctx.build("sampler", self.sampler, labels=labels.numpy(), batch_size=self.batch_size,
                            seed=ctx.seed, rank=ctx.rank, world_size=ctx.world_size,
                            groups=split.image_groups() if split.groups else None,
                            documents=split.image_documents())
        model = distributed.wrap(encoder if unlabelled is None else _WithExpander(encoder, unlabelled.expander),
                                 ctx.device, self.train.channels_last, self.train.sync_batchnorm)
        gathered = (getattr(loss_fn, "needs_global_batch", False) or miner is not None) and ctx.world_size > 1
        normalize = self.normalize and not getattr(loss_fn, "reads_norms", False)
        labels_dev = labels.to(ctx.device)
        ctx.log(f"{len(writers)} labelled writers ({self.label_fraction:.0%}), {len(split)} images, "
                f"{len(sampler)} batches per epoch")

        def step(index: list[int], generator: torch.Generator):
            index_t = torch.as_tensor(index)
            if self.freeze_backbone:
                backbone.eval()
            x = to_float(split.images[index_t], ctx.device)
            if transform is not None:
                x = transform(x, generator)
            if unlabelled is None:
                emb = model(x)
            else:
                emb, views = model(x, unlabelled.views(generator))
            emb = emb.float()
            y = labels_dev[index_t.to(ctx.device)]
            with full_precision(ctx.device):
                if normalize:
                    emb = F.normalize(emb, dim=1)
                if gathered:
                    emb, y = distributed.gather_with_grad(emb), distributed.gather(y)
                indices = miner(emb, y) if miner is not None else None
                metric = loss_fn(emb, y, indices)
                terms = loss_fn.terms() if hasattr(loss_fn, "terms") else {}
                if unlabelled is None:
                    return metric, terms
                view = unlabelled.loss(*views.float().chunk(2))
                # each rank's view loss is its own batch's: undo the trainer's scaling for a gathered metric loss
                local = view / distributed.global_loss_scale() if gathered else view
                return metric + self.unlabelled_weight * local, {**terms, "metric": metric.detach(),
                                                                 "unlabelled": view.detach()}

        batches, sampler_state = sampler_batches(ctx, sampler,
                                                 lambda: embed(encoder, split.images, ctx.device, "head"))
        trainer = Trainer(ctx, {"encoder": model, "loss": loss_fn, **sampler_state}, self.train,
                          steps_per_epoch=len(sampler), loss_modules=("loss",), global_batch=gathered)
        last = trainer.fit(batches, step, monitor=stage_monitor(ctx, encoder, self.train))
        path = save_encoder(ctx, encoder, backbone_spec, self.head)
        return {"encoder": path, "metrics": {"final_loss": last.get("loss"), "steps": trainer.step,
                                             "labelled_writers": len(writers)}}

    def _unlabelled(self, ctx: StageContext, expander: nn.Module | None) -> "_Unlabelled | None":
        if self.unlabelled_loss is None:
            return None
        if expander is None:
            raise ValueError(f"unlabelled_loss: stage {self.init_from!r} saved no head to use as the expander")
        loss = ctx.build("loss", self.unlabelled_loss, embedding_dim=expander.out_dim).to(ctx.device)
        per_rank = max(self.unlabelled_batch_size // ctx.world_size, 2)
        return _Unlabelled(ctx.dataset.splits["train"].images, per_rank, ctx.build("transform", self.unlabelled_transform),
                           expander.train(), loss, ctx.device)


class _Unlabelled:
    """The semi-supervised term's parts: the image pool, its views, the expander and the view loss."""

    def __init__(self, pool: torch.Tensor, batch_size: int, transform: Any, expander: nn.Module,
                 loss: nn.Module, device: torch.device):
        self.pool, self.batch_size, self.transform = pool, batch_size, transform
        self.expander, self.loss, self.device = expander, loss, device

    def views(self, generator: torch.Generator) -> torch.Tensor:
        """Two views of ``batch_size`` pool images drawn without replacement by this step's generator."""
        index = torch.randperm(len(self.pool), generator=generator)[:self.batch_size]
        x = to_float(self.pool[index], self.device)
        return torch.cat([self.transform(x, generator), self.transform(x, generator)])


class _WithExpander(nn.Module):
    """The encoder and the pre-training expander: one backbone pass over labelled and unlabelled images."""

    def __init__(self, encoder: Encoder, expander: nn.Module):
        super().__init__()
        self.encoder, self.expander = encoder, expander

    def forward(self, labelled: torch.Tensor, unlabelled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.encoder.backbone(torch.cat([labelled, unlabelled]))
        own, other = features[:len(labelled)], features[len(labelled):]
        emb = self.encoder.head(own) if self.encoder.head is not None else own
        return emb, self.expander(other)


def _transplant(target: nn.Module, source: nn.Module, stage: str) -> nn.Module:
    """``target`` with ``source``'s weights; the two must have the same parameter names and shapes."""
    theirs, ours = source.state_dict(), target.state_dict()
    mismatched = sorted(k for k in ours.keys() | theirs.keys()
                        if k not in ours or k not in theirs or ours[k].shape != theirs[k].shape)
    if mismatched:
        raise ValueError(f"backbone: the weights of stage {stage!r} do not fit it "
                         f"({len(mismatched)} differing parameters, e.g. {mismatched[0]!r})")
    target.load_state_dict(theirs)
    return target
