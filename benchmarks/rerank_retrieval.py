"""Writer retrieval with k-reciprocal re-ranking: its parameters chosen on the validation writers of a run.

For each named evaluation stage of a finished run, the validation and test writers' image files are
mapped as its fitted cosine verifier maps them — ``W(e − μ)``, normalised, from the stage's encoder
and test-time views or its hand-crafted features, as ``hvkit index`` maps them (``ScoreSpace``) —
and the ``retrieval`` evaluator ranks each image's writer among the others: without re-ranking, with the paper's k1 20, k2 6, λ 0.3 (Zhong et al. 2017) and
with every setting of a grid over ``k1``, ``k2`` and ``weight`` (``pool`` 100). The setting with
the best validation MAP@R averaged over the stages is then scored on the test writers. It prints
one line per stage and setting.

Usage (needs a run on the real data, which tests never do)::

    python benchmarks/rerank_retrieval.py RUN --stages vicreg_finetuned,supervised_10pct,vicreg,gsc \
        --root ../shared/data/cedar_and_dev
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np
import torch

from hvkit.evaluation import EvalData, evaluate
from hvkit_plugins.commands.index import ScoreSpace
from hvkit_plugins.datasets.cedar_and import cedar_and
from hvkit_plugins.evaluators.retrieval import Rerank, Retrieval

GRID = [Rerank(100, k1, k2, weight) for k1, k2, weight in
        itertools.product((4, 6, 8, 10, 14, 20), (1, 3, 6), (0.0, 0.1, 0.3, 0.5, 0.7))]


def retrieval(space: np.ndarray, labels: np.ndarray, rerank: Rerank) -> tuple[float, float]:
    """(precision@1, MAP@R) of self-retrieval in ``space``."""
    found = evaluate([Retrieval(clustering=False, rerank=rerank)], EvalData(embeddings=space, labels=labels))
    return found["retrieval"]["precision_at_1"], found["retrieval"]["map_at_r"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--stages", required=True, help="Comma-separated evaluation stages of the run.")
    parser.add_argument("--verifier", default="wccn_pair")
    parser.add_argument("--root", default="../shared/data/cedar_and_dev")
    parser.add_argument("--seed", type=int, default=0, help="The run's data.seed (its split).")
    args = parser.parse_args()
    data = cedar_and(root=args.root, seed=args.seed)
    stages = args.stages.split(",")
    parts = {part: ([Path(args.root) / p for p in data.splits[part].paths], np.asarray(data.splits[part].labels))
             for part in ("val", "test")}
    spaces = {}  # each image file read and mapped as `hvkit index build RUN --stage S --verifier V` maps it
    for stage in stages:
        space = ScoreSpace(args.run, stage, args.verifier, True, torch.device("cpu"))
        for part, (files, _) in parts.items():
            spaces[stage, part] = space.vectors(files).numpy()
    val = {stage: [retrieval(spaces[stage, "val"], parts["val"][1], rerank) for rerank in GRID] for stage in stages}
    best = GRID[int(np.argmax(np.mean([[m for _, m in val[stage]] for stage in stages], axis=0)))]
    for stage in stages:
        top = max(range(len(GRID)), key=lambda i: val[stage][i][1])
        print(f"{stage}: val MAP@R best at k1 {GRID[top].k1}, k2 {GRID[top].k2}, weight {GRID[top].weight} "
              f"({val[stage][top][1]:.3f}; precision@1 {val[stage][top][0]:.3f})")
        for name, rerank in (("none", Rerank()), ("paper", Rerank(100)), ("val-chosen", best)):
            p1, map_r = retrieval(spaces[stage, "test"], parts["test"][1], rerank)
            setting = f"k1 {rerank.k1:2} k2 {rerank.k2} weight {rerank.weight:.1f}" if rerank.pool else "cosine alone"
            print(f"  test {name:10} {setting:27}: precision@1 {p1:.3f}  MAP@R {map_r:.3f}")


if __name__ == "__main__":
    main()
