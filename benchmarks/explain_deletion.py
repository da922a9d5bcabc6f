"""Are ``hvkit explain``'s maps faithful? Ink deletion on a run's test pairs (pixel flipping, Samek et al. 2017).

For ``--pairs`` balanced test pairs of a finished run (the pairs its evaluation scored: the SSL-HV
protocol's draw on the test writers), the first word's ink pixels are ranked by their integrated-
gradients attribution (the second word held fixed, as ``hvkit explain`` computes it) and a share q
of the ink is erased to blank paper: the most positive pixels first, the most negative first, or
at random (the mean of ``--draws`` draws). A faithful map moves the score most — down when the
most positive ink goes, up when the most negative goes — with random erasure of as much ink in
between. Prints, for each q, the mean score change of each order and the share of pairs where
erasing the most positive ink lowered the score more than random erasure did.

Usage (needs a run on the real data, which tests never do)::

    python benchmarks/explain_deletion.py RUN --stage vicreg_finetuned --verifier cosine_pair \
        --root ../shared/data/cedar_and_dev --pairs 200
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from hvkit_plugins.commands.explain import Explainer
from hvkit_plugins.commands.fitted_run import FittedRun
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import sslhv_pairs
from hvkit_plugins.stages.encoder import to_float


def erased(image: torch.Tensor, pixels: np.ndarray) -> torch.Tensor:
    """``image`` (C, H, W) with the flat pixel indices ``pixels`` set to blank paper in every channel."""
    out = image.clone().reshape(image.shape[0], -1)
    out[:, torch.as_tensor(pixels)] = 0.0
    return out.reshape(image.shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--stage", required=True)
    parser.add_argument("--verifier", default="cosine_pair")
    parser.add_argument("--root", default="../shared/data/cedar_and_dev")
    parser.add_argument("--seed", type=int, default=0, help="The run's data.seed and seed (its split and pairs).")
    parser.add_argument("--pairs", type=int, default=200)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--draws", type=int, default=5)
    parser.add_argument("--shares", default="0.05,0.1,0.2,0.4", help="Shares of the ink erased.")
    args = parser.parse_args()
    shares = [float(q) for q in args.shares.split(",")]
    explainer = Explainer.of(FittedRun(args.run), args.stage, args.verifier, torch.device("cpu"))
    test = cedar_and(root=args.root, seed=args.seed).splits["test"]
    first, second, same = sslhv_pairs(np.asarray(test.labels), seed=args.seed)
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.choice(np.flatnonzero(same == s), args.pairs // 2, replace=False) for s in (1, 0)])
    changes = {(q, order): [] for q in shares for order in ("positive first", "random", "negative first")}
    for n in chosen:
        images = to_float(test.images[[first[n], second[n]]], torch.device("cpu"))
        with torch.no_grad():
            other = explainer.embed(images[1:])
        attribution, ends = explainer.attribute_side(images[0], other, steps=args.steps)
        flat = attribution.sum(dim=0).flatten().numpy()
        ink = np.flatnonzero(images[0].sum(dim=0).flatten().numpy() > 0)
        ranked = ink[np.argsort(-flat[ink], kind="stable")]
        variants, keys = [], []
        for q in shares:
            k = max(1, round(q * len(ink)))
            variants += [erased(images[0], ranked[:k]), erased(images[0], ranked[-k:])]
            keys += [(q, "positive first"), (q, "negative first")]
            for _ in range(args.draws):
                variants.append(erased(images[0], rng.choice(ink, k, replace=False)))
                keys.append((q, "random"))
        with torch.no_grad():
            scores = explainer.score(explainer.embed(torch.stack(variants)), other).numpy()
        base = float(ends[1])
        found: dict[tuple[float, str], list[float]] = {}
        for key, value in zip(keys, scores):
            found.setdefault(key, []).append(float(value) - base)
        for key, values in found.items():
            changes[key].append(float(np.mean(values)))
    print(f"{args.run} {args.stage}/{args.verifier}: {len(chosen)} test pairs (half same writer), {args.steps} steps, "
          f"random erasure {args.draws} draws")
    for q in shares:
        top, rand, bottom = (np.array(changes[q, order]) for order in ("positive first", "random", "negative first"))
        print(f"erase {q:.0%} of the ink: score change, mean ± sd over pairs — most positive first "
              f"{top.mean():+.4f} ± {top.std():.4f}, random {rand.mean():+.4f} ± {rand.std():.4f}, most negative "
              f"first {bottom.mean():+.4f} ± {bottom.std():.4f}; positive-first below random in "
              f"{(top < rand).mean():.0%} of pairs, negative-first above random in {(bottom > rand).mean():.0%}")


if __name__ == "__main__":
    main()
