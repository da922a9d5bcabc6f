"""Fuse the encoders of earlier stages into one encoder (feature-level fusion)."""

from __future__ import annotations

from typing import Any, Literal

import torch

from hvkit import distributed
from hvkit.api import StageOutput
from hvkit.engine import StageContext
from hvkit_plugins.datasets.pairs import labelled_writers
from hvkit_plugins.heads.cosine_pair import within_class_whitening
from hvkit_plugins.stages.encoder import Encoder, embed, load_stage_encoder, save_encoder


class Ensemble:
    """One encoder from several: the members' backbones side by side (the ``concat`` backbone).

    Each member's backbone features are centred on their mean over every training image
    (labels unused) and L2-normalised before concatenation, so each member weighs the same and
    a cosine score is the mean of the members' cosines. Later stages, ``hvkit eval``,
    ``verify`` and ``embed`` use the fused encoder like any other. Typical use: a fine-tuned
    self-supervised model beside the supervised one trained on the same labels — two views of
    the writers whose errors differ.

    ``whiten: within_class`` also whitens each member by its own within-writer scatter (WCCN, as
    the ``cosine_pair`` verifier's ``within_class``, shrinkage ``shrinkage``) estimated on the
    first ``label_fraction`` of the sorted training writers, before the normalisation: each
    member's scatter is estimated in its own D_m dimensions, better conditioned than one
    whitening of the joint Σ D_m from the same few writers.
    """

    def __init__(self, members: list[StageOutput], whiten: Literal["none", "within_class"] = "none",
                 label_fraction: float = 0.1, shrinkage: float = 0.5):
        if len(members) < 2 or len(set(members)) != len(members):
            raise ValueError(f"members must name at least two different earlier stages, got {members}")
        if whiten not in ("none", "within_class"):
            raise ValueError(f"whiten={whiten!r} must be 'none' or 'within_class'")
        if not 0.0 < label_fraction <= 1.0 or not 0.0 <= shrinkage <= 1.0:
            raise ValueError(f"label_fraction={label_fraction} must be in (0, 1] and shrinkage={shrinkage} in [0, 1]")
        self.members, self.whiten = members, whiten
        self.label_fraction, self.shrinkage = label_fraction, shrinkage

    def run(self, ctx: StageContext) -> dict[str, Any]:
        loaded = [load_stage_encoder(ctx, name) for name in self.members]
        spec = {"name": "concat", "members": [state["backbone_spec"] for _, state in loaded],
                "whiten": self.whiten == "within_class"}
        fused = ctx.build_backbone(spec)
        for target, (encoder, _) in zip(fused.members, loaded):
            target.load_state_dict(encoder.backbone.state_dict())
        images = ctx.dataset.splits["train"].images
        share = images[distributed.shard(len(images))]
        raw = distributed.gather_shards(torch.cat([embed(encoder, share, ctx.device) for encoder, _ in loaded], 1))
        fused.means.copy_(raw.mean(0).to(fused.means.device))
        note = ""
        if self.whiten == "within_class":
            labelled = labelled_writers(ctx.dataset.splits["train"], self.label_fraction)
            features = torch.cat([embed(encoder, labelled.images, ctx.device) for encoder, _ in loaded], 1)
            labels = torch.as_tensor(labelled.labels)
            blocks = [within_class_whitening(part, labels, self.shrinkage)
                      for part in features.split(fused.dims, dim=1)]
            fused.transform.copy_(torch.block_diag(*blocks).to(fused.transform))
            note = f", each whitened within {len(torch.unique(labels))} labelled writers"
        ctx.log(f"fused {', '.join(self.members)}: {' + '.join(map(str, fused.dims))} = {fused.embedding_dim}-d, "
                f"centred on {len(images)} training images{note}")
        return {"encoder": save_encoder(ctx, Encoder(fused), spec, None),
                "metrics": {"members": list(self.members), "dims": fused.dims}}

