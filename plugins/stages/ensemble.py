"""Fuse the encoders of earlier stages into one encoder (feature-level fusion)."""

from __future__ import annotations

from typing import Any

import torch

from hvkit import distributed
from hvkit.api import StageOutput
from hvkit.engine import StageContext
from hvkit_plugins.stages.encoder import Encoder, embed, load_encoder, save_encoder


class Ensemble:
    """One encoder from several: the members' backbones side by side (the ``concat`` backbone).

    Each member's backbone features are centred on their mean over every training image
    (labels unused) and L2-normalised before concatenation, so each member weighs the same and
    a cosine score is the mean of the members' cosines. Later stages, ``hvkit eval``,
    ``verify`` and ``embed`` use the fused encoder like any other. Typical use: a fine-tuned
    self-supervised model beside the supervised one trained on the same labels — two views of
    the writers whose errors differ.
    """

    def __init__(self, members: list[StageOutput]):
        if len(members) < 2 or len(set(members)) != len(members):
            raise ValueError(f"members must name at least two different earlier stages, got {members}")
        self.members = members

    def run(self, ctx: StageContext) -> dict[str, Any]:
        loaded = [load_encoder(ctx.output_path(name, "encoder"), ctx.registry, ctx.device) for name in self.members]
        spec = {"name": "concat", "members": [state["backbone_spec"] for _, state in loaded]}
        fused = ctx.build_backbone(spec)
        for target, (encoder, _) in zip(fused.members, loaded):
            target.load_state_dict(encoder.backbone.state_dict())
        images = ctx.dataset.splits["train"].images
        share = images[distributed.shard(len(images))]
        raw = distributed.gather_shards(torch.cat([embed(encoder, share, ctx.device) for encoder, _ in loaded], 1))
        fused.means.copy_(raw.mean(0).to(fused.means.device))
        ctx.log(f"fused {', '.join(self.members)}: {' + '.join(map(str, fused.dims))} = {fused.embedding_dim}-d, "
                f"centred on {len(images)} training images")
        return {"encoder": save_encoder(ctx, Encoder(fused), spec, None),
                "metrics": {"members": list(self.members), "dims": fused.dims}}

