"""The installed first-party components as pytest parameters, for the conformance tests."""

from __future__ import annotations

import pytest
import torch

from hvkit import testing
from hvkit.registry import Registry, load_entry_points

REGISTRY = load_entry_points(Registry(), allow={"hvkit"})

CHECKS = {"loss": testing.check_loss, "miner": testing.check_miner, "sampler": testing.check_sampler,
          "evaluator": testing.check_evaluator, "backbone": testing.check_backbone,
          "head": testing.check_head, "transform": testing.check_transform}


def vae_inputs(dtype: torch.dtype, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """(x, recon, mu, logvar) for the VAE's negative ELBO: images in [0, 1], a 3-d latent."""
    x, recon = (torch.rand(4, 1, 8, 8, generator=generator, dtype=dtype) for _ in range(2))
    mu, logvar = (torch.randn(4, 3, generator=generator, dtype=dtype) for _ in range(2))
    return x, recon, mu, logvar


# What a component needs beyond its defaults: a required parameter, or its own inputs.
ARGUMENTS = {
    ("backbone", "concat"): {"params": {"members": ["small_cnn", "small_cnn"]}},
    ("backbone", "torchvision"): {"params": {"arch": "mobilenet_v3_small"}},
    ("loss", "dense_anchor"): {"params": {"loss": "multi_similarity"}},
    ("loss", "xbm"): {"params": {"loss": "contrastive"}},
    ("loss", "weighted_sum"): {"params": {"losses": ["tuplet_margin", "intra_pair_variance"]}},
    ("loss", "regularized"): {"params": {"loss": "arcface", "weight_regularizer": "regular_face",
                                         "embedding_regularizer": "lp"}},
    ("loss", "vae_elbo"): {"inputs": vae_inputs},
    ("miner", "pml"): {"params": {"miner": "PairMarginMiner"}},
    ("loss", "self_supervised"): {"params": {"loss": "triplet"}},
    ("sampler", "fixed_triplets"): {"params": {"triplets": 40}, "batch_size": 12, "allow_repeats": True},
    ("sampler", "hard_class"): {"params": {"samples_per_class": 2}},  # P = 4: room for a group of 2 on each of 2 ranks
    ("sampler", "hierarchical"): {"params": {"samples_per_class": 2},  # the kit's writers are i % 12:
                                  "groups": [i % 3 for i in range(96)]},   # writer w in group w % 3
    ("transform", "compose"): {"params": {"transforms": ["ink_thickness", "gaussian_noise"]}},
}
SIZES = {"backbone": {"image_size": 32, "batch_size": 2, "in_channels": (1,)}}  # seconds, not minutes

# Components that do not keep their kind's contract in hookspecs.py, and why.
OUTSIDE_CONTRACT: dict[tuple[str, str], str] = {}


def cases(*kinds: str) -> list:
    """One parameter per registered component of ``kinds``; broken plugins are skipped with their reason."""
    out = []
    for kind in kinds:
        for name in REGISTRY.names(kind):
            gap = OUTSIDE_CONTRACT.get((kind, name))
            marks = [pytest.mark.xfail(strict=True, raises=AssertionError, reason=gap)] if gap else []
            out.append(pytest.param(kind, name, id=f"{kind}-{name}", marks=marks))
        out += [pytest.param(kind, p.name or p.plugin, id=f"{kind}-{p.name or p.plugin}",
                             marks=pytest.mark.skip(reason=f"broken in the registry: {p.message}"))
                for p in REGISTRY.problems if p.kind == kind or (p.kind is None and kind in p.plugin)]
    return out


def check(kind: str, name: str) -> None:
    """Run the kit's check for ``kind`` on the registered factory ``name``."""
    factory = REGISTRY.get(kind, name).factory
    CHECKS[kind](factory, **SIZES.get(kind, {}), **ARGUMENTS.get((kind, name), {}))
