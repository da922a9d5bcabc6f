"""Speed of the evaluation layer against its references, measured in one run; prints markdown tables.

Each call runs in a freshly spawned process, so its peak memory is its own: the peak
resident set (``VmHWM``, reset before the call) above the resident set at its start, the
largest over the runs. Times are the best of ``--repeats`` alternating runs (the machine
may be shared). Three measurements:

1. Retrieval metrics (self-retrieval, k = largest class size) through ``hvkit.evaluation``
   against pytorch-metric-learning's ``AccuracyCalculator(k="max_bin_count")`` with its
   default faiss-cpu kNN and k-means, on the same L2-normalised embeddings; the values
   must agree.
2. All-pairs ROC AUC / EER (every unordered pair, streamed 2^16-bin histograms) against
   the dense floor: the same upper-triangle blocks of matrix products with nothing else.
3. Explicit pair scoring of ``--pairs`` random pairs against a NumPy gather-and-dot
   (chunks of 2^20 pairs: whole it would need 2 × P × D floats) and against the memory
   floor: bytes that must be read (two rows and two int64 ids per pair) / copy bandwidth
   (bytes read + written per second by a 1 GiB ``np.copyto``).
4. min Cllr in ``--draws`` writer-bootstrap draws of ``--test-pairs`` scored pairs from
   ``--test-writers`` writers (the real CEDAR AND test set's sizes by default): the batched PAV
   (:func:`~hvkit.evaluation.calibration.min_cllr_of_counts`, 250 draws at a time, as the
   ``verification`` evaluator computes its interval) against refitting PAV on each draw's copied
   pairs (``hvkit.evaluation.min_cllr``, one draw at a time); the values must agree.

Data: ``--n`` embeddings of dimension ``--dim`` from writers of ``--per-writer`` samples
on average (uniform between half and 1.5 times that), writer centre + Gaussian noise
(σ = 2 per coordinate: precision@1 about 0.6), L2-normalised.

    python benchmarks/eval.py                 # N = 100,000, 10^7 pairs
    python benchmarks/eval.py --n 20000       # smaller, for a 2-core machine
    python benchmarks/eval.py --only retrieval --per-writer 1000   # 100 writers, k ~ 1500
    python benchmarks/eval.py --only min_cllr                      # the bootstrap of min Cllr alone
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import time

import numpy as np
import torch
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator

from hvkit.evaluation import EvalData, PairSet, RocCounts, evaluate, min_cllr
from hvkit.evaluation.calibration import min_cllr_of_counts
from hvkit.index import all_pairs_histogram, score_blocks, score_pairs
from hvkit_plugins.evaluators.retrieval import Retrieval


def clustered(n: int, dim: int, per_writer: int = 100, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit embeddings from writers of ``per_writer`` / 2 to 3 ``per_writer`` / 2 samples each (uniform; the last takes the remainder)."""
    rng = np.random.default_rng(seed)
    sizes = []
    while sum(sizes) < n:
        sizes.append(int(rng.integers(per_writer // 2, 3 * per_writer // 2 + 1)))
    sizes[-1] -= sum(sizes) - n
    labels = np.repeat(np.arange(len(sizes)), sizes)
    centres = rng.standard_normal((len(sizes), dim)).astype(np.float32)
    x = centres[labels] + 2.0 * rng.standard_normal((n, dim)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, labels


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def _child(fn, args, conn) -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # reset the peak-RSS mark to the current RSS
    except OSError:
        pass
    start = _status_kib("VmRSS")
    t0 = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - t0
    conn.send((seconds, max(_status_kib("VmHWM") - start, 0) / 1024, result))
    conn.close()


def run_once(fn, *args) -> tuple[float, float, object]:
    """``(seconds, peak MiB above the starting RSS, result)`` of ``fn(*args)`` in a fresh process.

    Spawned, not forked: torch's and FAISS's OpenMP thread pools do not survive a fork
    cleanly, which slowed the torch-heavy reference several-fold in a forked child.
    """
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(fn, args, child))
    process.start()
    out = parent.recv()
    process.join()
    return out


def compare(repeats: int, *calls: tuple) -> list[tuple[float, float, object]]:
    """Each ``(fn, *args)`` of ``calls`` run ``repeats`` times, alternating; per call the best time and the largest peak."""
    runs = [[run_once(*call) for call in calls] for _ in range(repeats)]
    return [(min(r[i][0] for r in runs), max(r[i][1] for r in runs), runs[0][i][2]) for i in range(len(calls))]


def hvkit_retrieval(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    return evaluate({"retrieval": Retrieval(recall_at=[1])}, EvalData(x, labels))["retrieval"]


def pml_retrieval(x: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    calculator = AccuracyCalculator(include=("precision_at_1", "r_precision", "mean_average_precision_at_r",
                                             "NMI", "AMI"), k="max_bin_count", device=torch.device("cpu"))
    return calculator.get_accuracy(x, labels)


def dense_floor(x: np.ndarray, block_size: int) -> None:
    score_blocks(x, lambda scores, q0, r0: None, metric="cosine", block_size=block_size, upper_triangle=True)


def hvkit_all_pairs(x: np.ndarray, labels: np.ndarray, block_size: int) -> dict[str, float]:
    roc = RocCounts.from_histogram(all_pairs_histogram(x, labels, block_size=block_size))
    return {"auc": roc.auc(), "auc_bound": roc.auc_error_bound(), "eer": roc.eer()}


def hvkit_pairs(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return score_pairs(x, pairs, metric="ip")


def numpy_pairs(x: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    out = np.empty(len(pairs), np.float32)
    for start in range(0, len(pairs), 1 << 20):
        chunk = pairs[start:start + (1 << 20)]
        out[start:start + len(chunk)] = np.einsum("ij,ij->i", x[chunk[:, 0]], x[chunk[:, 1]])
    return out


def scored_pairs(count: int, writers: int, seed: int = 0) -> PairSet:
    """Balanced pairs, a writer's pairs together, scored by a Gaussian shift of 1.6 (AUC about 0.87)."""
    rng = np.random.default_rng(seed)
    same = rng.random(count) < 0.5
    return PairSet(rng.standard_normal(count) + 1.6 * same, same, np.sort(rng.integers(0, writers, count)))


def draw_weights(pairs: PairSet, draws: int) -> np.ndarray:
    """Each draw's weight per pair: how often its writer was drawn (as the writer bootstrap draws)."""
    ids, index = np.unique(pairs.writers, return_inverse=True)
    rng = np.random.default_rng(2)
    return np.stack([np.bincount(rng.integers(0, len(ids), len(ids)), minlength=len(ids))[index]
                     for _ in range(draws)]).astype(np.float64)


def batched_min_cllr(pairs: PairSet, weights: np.ndarray) -> np.ndarray:
    levels, level = np.unique(pairs.scores, return_inverse=True)
    out = []
    for chunk in np.array_split(weights, max(1, len(weights) // 250)):
        same = np.stack([np.bincount(level, w * pairs.same, len(levels)) for w in chunk])
        diff = np.stack([np.bincount(level, w * ~pairs.same, len(levels)) for w in chunk])
        out.append(min_cllr_of_counts(same, diff))
    return np.concatenate(out)


def per_draw_min_cllr(pairs: PairSet, weights: np.ndarray) -> np.ndarray:
    rows = np.arange(len(pairs.scores))
    out = []
    for w in weights:
        copied = np.repeat(rows, w.astype(np.int64))
        out.append(min_cllr(pairs.scores[copied], pairs.same[copied]))
    return np.array(out)


def copy_bandwidth() -> float:
    """Bytes read + written per second by ``np.copyto`` of 1 GiB (best of 3)."""
    src = np.ones(1 << 28, np.float32)
    dst = np.empty_like(src)
    best = np.inf
    for _ in range(3):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000, help="embeddings (default 100,000)")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--per-writer", type=int, default=100, help="mean samples per writer (default 100)")
    parser.add_argument("--pairs", type=int, default=10_000_000, help="explicit pairs (default 10^7)")
    parser.add_argument("--block", type=int, default=1024, help="all-pairs block size (default: the function's, 1024)")
    parser.add_argument("--test-pairs", type=int, default=24_342, help="pairs of the min Cllr bootstrap")
    parser.add_argument("--test-writers", type=int, default=227, help="their writers")
    parser.add_argument("--draws", type=int, default=1000, help="bootstrap draws of min Cllr")
    parser.add_argument("--only", default="retrieval,all_pairs,pairs,min_cllr", help="comma-separated subset")
    parser.add_argument("--repeats", type=int, default=1, help="alternating runs; the best time is kept")
    args = parser.parse_args()
    only = set(args.only.split(","))
    x, labels = clustered(args.n, args.dim, args.per_writer)
    sizes = np.bincount(labels)
    print(f"N={args.n}, dim={args.dim}, {len(sizes)} writers of {sizes.min()}-{sizes.max()} samples; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"{platform.processor() or platform.machine()}; best of {args.repeats} alternating run(s), "
          f"load average {os.getloadavg()[0]:.1f} at the start\n")

    if "retrieval" in only:
        (pml_s, pml_mb, pml), (ours_s, ours_mb, ours) = compare(
            args.repeats, (pml_retrieval, x, labels), (hvkit_retrieval, x, labels))
        keys = {"precision_at_1": "precision_at_1", "r_precision": "r_precision",
                "map_at_r": "mean_average_precision_at_r", "nmi": "NMI", "ami": "AMI"}
        gap = max(abs(ours[a] - pml[b]) for a, b in keys.items())
        print("| retrieval (self, k = largest class) | seconds | peak MiB | speed-up |\n|---|---|---|---|")
        print(f"| PML AccuracyCalculator (faiss-cpu) | {pml_s:.1f} | {pml_mb:.0f} | 1.00 |")
        print(f"| hvkit retrieval evaluator | {ours_s:.1f} | {ours_mb:.0f} | {pml_s / ours_s:.2f} |")
        print("\nvalues: " + ", ".join(f"{a} {ours[a]:.6f}" for a in keys) + f"; max |hvkit - PML| = {gap:.2e}\n")

    if "all_pairs" in only:
        (floor_s, floor_mb, _), (ours_s, ours_mb, roc) = compare(
            args.repeats, (dense_floor, x, args.block), (hvkit_all_pairs, x, labels, args.block))
        pairs = args.n * (args.n - 1) // 2
        print(f"| all pairs ({pairs:.3g} pairs, blocks of {args.block}) | seconds | peak MiB | / floor |\n|---|---|---|---|")
        print(f"| dense floor: the upper-triangle products alone | {floor_s:.1f} | {floor_mb:.0f} | 1.00 |")
        print(f"| hvkit all_pairs_histogram (2^16 bins) | {ours_s:.1f} | {ours_mb:.0f} | {ours_s / floor_s:.2f} |")
        print(f"\nAUC {roc['auc']:.6f} (binning error <= {roc['auc_bound']:.1e}), EER {roc['eer']:.6f}\n")

    if "pairs" in only:
        rng = np.random.default_rng(1)
        pairs = rng.integers(0, args.n, (args.pairs, 2))
        bandwidth = copy_bandwidth()
        floor_s = args.pairs * (2 * args.dim * 4 + 16) / bandwidth
        (numpy_s, numpy_mb, reference), (ours_s, ours_mb, scores) = compare(
            args.repeats, (numpy_pairs, x, pairs), (hvkit_pairs, x, pairs))
        gap = float(np.abs(scores - reference).max())
        print(f"| {args.pairs:.3g} explicit pairs | seconds | Mpairs/s | peak MiB | vs NumPy | vs floor |\n|---|---|---|---|---|---|")
        print(f"| memory floor ({bandwidth / 1e9:.1f} GB/s copy) | {floor_s:.2f} | {args.pairs / floor_s / 1e6:.1f} | | | 1.00 |")
        print(f"| NumPy gather + einsum | {numpy_s:.2f} | {args.pairs / numpy_s / 1e6:.1f} | {numpy_mb:.0f} | 1.00 | {floor_s / numpy_s:.2f} |")
        print(f"| hvkit score_pairs | {ours_s:.2f} | {args.pairs / ours_s / 1e6:.1f} | {ours_mb:.0f} | {numpy_s / ours_s:.2f} | {floor_s / ours_s:.2f} |")
        print(f"\nmax |hvkit - NumPy| = {gap:.1e}\n")

    if "min_cllr" in only:
        test = scored_pairs(args.test_pairs, args.test_writers)
        weights = draw_weights(test, args.draws)
        (ref_s, ref_mb, reference), (ours_s, ours_mb, found) = compare(
            args.repeats, (per_draw_min_cllr, test, weights), (batched_min_cllr, test, weights))
        gap = float(np.abs(found - reference).max())
        print(f"| min Cllr of {args.draws} writer-bootstrap draws ({args.test_pairs} pairs, {args.test_writers} "
              "writers) | seconds | peak MiB | speed-up |\n|---|---|---|---|")
        print(f"| PAV refitted on each draw's copied pairs (`min_cllr`) | {ref_s:.1f} | {ref_mb:.0f} | 1.00 |")
        print(f"| batched PAV (`min_cllr_of_counts`, 250 draws at a time) | {ours_s:.1f} | {ours_mb:.0f} | "
              f"{ref_s / ours_s:.1f} |")
        print(f"\nmedian min Cllr {np.median(found):.4f}; max |batched - per draw| = {gap:.1e}")


if __name__ == "__main__":
    main()
