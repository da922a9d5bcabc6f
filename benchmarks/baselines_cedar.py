"""Handcrafted verification baselines on CEDAR AND (or the synthetic default) with the SSL-HV pair protocol.

Checks the ``cedar_and`` reader and :mod:`hvkit_plugins.datasets.pairs` against the SSL-HV paper
(Chauhan et al. 2024, Table: HOG 0.72 accuracy, raw pixels 0.63-0.65). For each of the evaluate
stage's hand-crafted ``features`` — raw pixels, HOG (9 orientations, 8 x 8 cells, 2 x 2 blocks, as
SSL-HV's OpenCV HOG), uniform LBP per cell, the contour hinge (the paper's unordered legs, and
ordered as the flagship recipe scores it) and CEDAR's GSC features, graded and binary — it reports, on the balanced
SSL-HV pairs of the *test* writers:

- ``cosine``: cosine similarity of the two raw feature vectors, no training;
- ``centred cos``: the pipeline's ``cosine_pair`` verifier, the cosine after subtracting the
  mean feature of every training image (labels unused) — what the evaluate stage reports;
- ``WCCN cos``: the pipeline's ``wccn_pair`` verifier, the centred cosine after whitening by
  the within-writer scatter of the first 10 % (sorted) training writers;
- ``correlation``: the pipeline's ``correlation_pair`` verifier, Pearson's correlation of the two
  vectors — on GSC's bits (``gscbits``, GSC with ``binary=0``) CEDAR-FOX's correlation measure;

  each with accuracy at the threshold that is best on the validation writers' pairs;
- ``pair head``: SSL-HV's downstream verifier (``sslhv_pair`` head: shared Linear to 64 on both
  features, signed difference, MLP 64-32-2) trained with cross-entropy on the pairs of the first
  10 % (sorted) training writers, as the paper does, by the evaluate stage's own
  :func:`~hvkit_plugins.stages.pair_training.train_pair_head` (Adam 1e-3, batch 256, the best
  epoch on the validation pairs); accuracy at the validation threshold, as the pipeline reports
  it, and (``head p>0.5``) at p > 0.5.

Usage (needs the real data, which tests never do)::

    python benchmarks/baselines_cedar.py --root /work/shared/data/cedar_and_dev
    python benchmarks/baselines_cedar.py --synthetic     # the embedded synthetic default
"""

from __future__ import annotations

import argparse
import functools
import time

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.datasets.pairs import labelled_writers, sslhv_pairs
from hvkit_plugins.heads.cosine_pair import CorrelationPair, CosinePair
from hvkit_plugins.heads.sslhv_pair import SSLHVPairHead
from hvkit_plugins.stages.handcrafted import HANDCRAFTED, gsc, hinge
from hvkit_plugins.stages.pair_training import PairTraining, pair_probability, train_pair_head


def cosine_verifiers(feats: dict[str, np.ndarray], labels10: np.ndarray) -> dict[str, CosinePair]:
    """The plain, centred and WCCN cosines and the correlation, fitted as the evaluate stage fits them."""
    train10, train = torch.from_numpy(feats["train10"]), torch.from_numpy(feats["train"])
    dim = train.shape[1]
    return {"cosine": CosinePair(dim, centre=False),
            "centred cos": CosinePair(dim).fit(train10, unlabelled=train),
            "WCCN cos": CosinePair(dim, whiten="within_class").fit(train10, torch.from_numpy(labels10), train),
            "correlation": CorrelationPair(dim)}


def score(verifier: CosinePair, features: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    x = torch.from_numpy(features)
    with torch.no_grad():
        return verifier(x[i], x[j]).numpy()


def best_threshold(score: np.ndarray, same: np.ndarray) -> float:
    """The threshold (among 1,000 quantiles of ``score``) with the best accuracy on these pairs."""
    candidates = np.quantile(score, np.linspace(0.0, 1.0, 1001))
    accuracy = ((score[None] >= candidates[:, None]) == same[None]).mean(1)
    return float(candidates[int(np.argmax(accuracy))])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/cedar_and_dev")
    parser.add_argument("--synthetic", action="store_true", help="use the synthetic default instead of --root")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    start = time.perf_counter()
    data = cedar_and(root=None if args.synthetic else args.root, seed=args.seed)
    print(f"data: {data.info['source']}  " + "  ".join(f"{k}: {v['images']} images / {v['writers']} writers"
                                                        for k, v in data.info["splits"].items()))
    train = labelled_writers(data.splits["train"], 0.1)
    pairs = {name: sslhv_pairs(split.labels, seed=args.seed)
             for name, split in (("train10", train), ("val", data.splits["val"]), ("test", data.splits["test"]))}
    print("pairs: " + "  ".join(f"{k}: {len(v[0])}" for k, v in pairs.items())
          + f"  (labelled writers: {len(np.unique(train.labels))})")
    print(f"{'feature':8} {'method':12} {'test AUC':>8} {'test acc':>8}")
    features = HANDCRAFTED | {"ordhinge": functools.partial(hinge, ordered=True),  # the recipe's hinge
                              "gscbits": functools.partial(gsc, binary=0.0)}     # CEDAR-FOX's GSC
    for name, extract in features.items():
        feats = {k: extract(s.images).numpy() for k, s in (("train10", train), ("train", data.splits["train"]),
                                                   ("val", data.splits["val"]), ("test", data.splits["test"]))}
        ti, tj, tsame = pairs["test"]
        for method, verifier in cosine_verifiers(feats, train.labels).items():
            test_score = score(verifier, feats["test"], ti, tj)
            threshold = best_threshold(score(verifier, feats["val"], *pairs["val"][:2]), pairs["val"][2])
            accuracy = ((test_score >= threshold) == tsame).mean()
            print(f"{name:8} {method:12} {roc_auc_score(tsame, test_score):8.3f} {accuracy:8.3f}")
        x = {k: torch.from_numpy(v) for k, v in feats.items()}
        torch.manual_seed(args.seed)
        head = SSLHVPairHead(in_dim=x["test"].shape[1])
        train_pair_head(head, x["train10"], pairs["train10"], x["val"], pairs["val"], PairTraining(),
                        torch.Generator().manual_seed(args.seed))
        prob = pair_probability(head, x["test"], ti, tj)
        threshold = best_threshold(pair_probability(head, x["val"], *pairs["val"][:2]), pairs["val"][2])
        auc = roc_auc_score(tsame, prob)
        print(f"{name:8} {'pair head':12} {auc:8.3f} {((prob >= threshold) == tsame).mean():8.3f}")
        print(f"{name:8} {'head p>0.5':12} {auc:8.3f} {((prob > 0.5) == tsame).mean():8.3f}")
    print(f"({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
