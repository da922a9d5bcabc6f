"""``hvkit compare``: is one model's verification better than another's, beyond test-writer noise?"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import numpy as np

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.evaluation import PairSet, RocCounts, cllr, min_cllr
from hvkit.evaluation.bootstrap import seeded_paired_bootstrap
from hvkit.status import runs_in
from hvkit_plugins.evaluators.open_set import OPEN_SET_SCORES, Probes, paired_probes_bootstrap
from hvkit_plugins.evaluators.set_verification import SET_SCORES
from hvkit_plugins.stages.evaluate import PAIR_SCORES, load_pair_scores, load_pairs_digest


def _load(run_dir: Path, ref: str) -> tuple[tuple[PairSet, float | None, np.ndarray | None], str | None]:
    """((test pairs, val threshold, log LRs by the val calibration or None), pairs digest) of ``STAGE/VERIFIER``,
    or of ``STAGE/set:K``, the stage's k-against-k trials with K images a side."""
    stage, _, verifier = ref.partition("/")
    if not stage or not verifier:
        raise HvkitError(f"{ref!r} must read STAGE/VERIFIER, STAGE/set:K or STAGE/open_set, e.g. "
                         f"fused_10pct/cosine_pair")
    if verifier.startswith("set:"):
        return _load_sets(run_dir, stage, verifier.removeprefix("set:"))
    path = run_dir / "stages" / stage / PAIR_SCORES
    if not path.is_file():
        raise HvkitError(f"{path}: no test pair scores; {stage!r} is not an evaluate stage of this run, or it ran "
                         f"before hvkit saved them (re-run it: hvkit eval {run_dir} --stage {stage})")
    found = load_pair_scores(path)
    if verifier not in found:
        raise HvkitError(f"{path}: no verifier {verifier!r}; it holds {', '.join(sorted(found))}")
    pairs, threshold = found[verifier]
    calibration = _calibration(run_dir, stage, verifier)
    log_lr = None if calibration is None else calibration["slope"] * pairs.scores + calibration["offset"]
    return (pairs, threshold, log_lr), load_pairs_digest(path)


def _load_sets(run_dir: Path, stage: str, size: str) -> tuple[tuple[PairSet, float | None, np.ndarray | None], str]:
    """The trials of ``set_verification`` with ``size`` images a side, as :func:`_load` gives a verifier's pairs."""
    path = run_dir / "stages" / stage / SET_SCORES
    if not path.is_file():
        raise HvkitError(f"{path}: no k-against-k trial scores; {stage!r} ran no set_verification with plots on "
                         f"(re-run it: hvkit eval {run_dir} --stage {stage})")
    with np.load(path) as saved:
        if f"k{size}:scores" not in saved.files:
            sizes = sorted(int(key[1:].split(":")[0]) for key in saved.files if key.endswith(":scores"))
            raise HvkitError(f"{path}: no trials with {size!r} images a side; it holds "
                             + ", ".join(f"set:{k}" for k in sizes))
        pairs = PairSet(saved[f"k{size}:scores"], saved[f"k{size}:same"], saved[f"k{size}:writers"])
        digest = str(saved[f"k{size}:digest"])
    found = _metrics(run_dir).get(stage, {}).get("set_verification", {}).get(f"k{size}", {})
    calibration = _checked(found.get("calibration"))
    log_lr = None if calibration is None else calibration["slope"] * pairs.scores + calibration["offset"]
    return (pairs, found.get("threshold"), log_lr), digest


def _load_probes(run_dir: Path, stage: str) -> tuple[tuple[Probes, list[float]], str]:
    """((the open_set probes' scores, their false alarm rates), digest of the gallery and probes) of ``STAGE``."""
    path = run_dir / "stages" / stage / OPEN_SET_SCORES
    if not path.is_file():
        raise HvkitError(f"{path}: no open-set probe scores; {stage!r} ran no open_set with plots on "
                         f"(re-run it: hvkit eval {run_dir} --stage {stage})")
    with np.load(path) as saved:
        return (Probes.load(saved), [float(f) for f in saved["far_targets"]]), str(saved["digest"])


def _compare_open_set(dirs_a: list[Path], dirs_b: list[Path], a: str, b: str, resamples: int,
                      confidence: float) -> dict[str, Any]:
    """The paired bootstrap of two stages' open-set identification, as :func:`compare_command` reports it."""
    loaded_a, loaded_b = ([(d, _load_probes(d, ref.partition("/")[0])) for d in dirs]
                          for ref, dirs in ((a, dirs_a), (b, dirs_b)))
    _same_pairs(loaded_a + loaded_b)
    targets = {tuple(far) for _, ((_, far), _) in loaded_a + loaded_b}
    if len(targets) > 1:
        raise HvkitError(f"{a} and {b}: the open_set evaluations used different far_targets {sorted(targets)}")
    far_targets = list(targets.pop())
    runs_a, runs_b = [probes for _, ((probes, _), _) in loaded_a], [probes for _, ((probes, _), _) in loaded_b]
    diff = paired_probes_bootstrap(runs_a, runs_b, far_targets, resamples, confidence)

    def mean(runs: list[Probes]) -> dict[str, float]:
        found = [run.metrics(far_targets) for run in runs]
        return {name: float(np.mean([f[name] for f in found])) for name in found[0]}

    return {"a": {"ref": a, "runs": len(runs_a), **mean(runs_a)}, "b": {"ref": b, "runs": len(runs_b), **mean(runs_b)},
            "a_minus_b": diff}


def _metrics(run_dir: Path) -> dict[str, Any]:
    """The run's metrics.json, or {} where it cannot be read."""
    try:
        return json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _checked(calibration: Any) -> dict[str, float] | None:
    return calibration if isinstance(calibration, dict) and {"slope", "offset"} <= set(calibration) else None


def _calibration(run_dir: Path, stage: str, verifier: str) -> dict[str, float] | None:
    """The verifier's val calibration ``{slope, offset}`` from the run's metrics.json, when it has one."""
    return _checked(_metrics(run_dir).get(stage, {}).get("verification", {}).get(verifier, {}).get("calibration"))


def _same_pairs(loaded: list[tuple[Path, tuple[tuple[PairSet, float | None], str | None]]]) -> None:
    """Refuse runs whose test pairs differ (another split, data seed or dataset)."""
    digests = {(d, digest) for d, (_, digest) in loaded if digest is not None}
    if len({digest for _, digest in digests}) > 1:
        first, *_ = sorted(digests)
        other = next(d for d, digest in sorted(digests) if digest != first[1])
        raise HvkitError(f"{first[0]} and {other} scored different test pairs (another split, data.seed or "
                         f"dataset, or for set:K and open_set other evaluator settings); fix data.seed and vary "
                         f"seed to compare training runs")


def _point(pairs: PairSet, threshold: float | None, log_lr: np.ndarray | None) -> dict[str, float]:
    roc = RocCounts.from_scores(pairs.scores, pairs.same)
    out = {"roc_auc": roc.auc(), "eer": roc.eer(), "min_cllr": min_cllr(pairs.scores, pairs.same)}
    if threshold is not None:
        out["accuracy"] = float(((pairs.scores >= threshold) == pairs.same).mean())
    if log_lr is not None:
        out["cllr"] = cllr(log_lr, pairs.same)
    return out


def _mean_point(runs: list[tuple[PairSet, float | None, np.ndarray | None]]) -> dict[str, float]:
    points = [_point(*run) for run in runs]
    return {name: float(np.mean([p[name] for p in points]))
            for name in ("accuracy", "roc_auc", "eer", "cllr", "min_cllr") if all(name in p for p in points)}


def _compare_pairs(dirs_a: list[Path], dirs_b: list[Path], a: str, b: str, resamples: int,
                   confidence: float) -> dict[str, Any]:
    """The paired bootstrap of two verifiers' (or two stages' k-against-k) test pairs, as :func:`compare_command`
    reports it."""
    loaded_a, loaded_b = [(d, _load(d, a)) for d in dirs_a], [(d, _load(d, b)) for d in dirs_b]
    _same_pairs(loaded_a + loaded_b)
    runs_a, runs_b = [run for _, (run, _) in loaded_a], [run for _, (run, _) in loaded_b]
    try:
        diff = seeded_paired_bootstrap(runs_a, runs_b, resamples, confidence)
    except ValueError as exc:
        raise HvkitError(f"{a} and {b}: {exc}") from None
    return {"a": {"ref": a, "runs": len(runs_a), **_mean_point(runs_a)},
            "b": {"ref": b, "runs": len(runs_b), **_mean_point(runs_b)}, "a_minus_b": diff}


@click.command("compare")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("a")
@click.argument("b")
@click.option("--against", type=click.Path(exists=True, file_okay=False, path_type=Path), multiple=True,
              help="Run directory of B (default: A's runs); repeat it for B's runs under other seeds. "
                   "Every run must have scored the same test pairs.")
@click.option("--seed-run", "seed_runs", type=click.Path(exists=True, file_okay=False, path_type=Path),
              multiple=True, help="Another run of A's recipe under another seed (repeatable): the interval "
                                  "then covers the training's randomness as well as the test writers'.")
@click.option("--resamples", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def compare_command(run_dir: Path, a: str, b: str, against: tuple[Path, ...], seed_runs: tuple[Path, ...],
                    resamples: int, confidence: float, as_json: bool) -> None:
    """Compare verifier A with B (each STAGE/VERIFIER) on the same test pairs, by a paired writer bootstrap.

    STAGE/set:K names a stage's k-against-k trials with K images a side instead (``set_verification``,
    saved with the plots); the two must have drawn the same trials. STAGE/open_set compares two stages'
    open-set identification (``open_set``, saved with the plots: rank 1, detection AUC and the detection and
    identification rate at each false alarm rate), each draw resampling the enrolled and the unknown writers;
    the two must have drawn the same gallery and probes.

    Prints each one's accuracy (at its validation threshold), ROC AUC, EER, Cllr (of the log
    LRs by its validation calibration, from the run's metrics.json) and min Cllr, and the interval of A − B
    over draws of the test writers, with the share of draws where A is not better (a one-sided
    bootstrap p-value). Given several runs a side (``--seed-run``,
    repeated ``--against``), each draw also resamples the runs, and the figures are means
    over them. RUN_DIR (or --against) may be a folder of runs, a seed sweep's
    (``hvkit sweep --vary seed=[0, 1, 2]``): every run in it is one.
    """
    dirs_a = [*runs_in(run_dir), *seed_runs]
    dirs_b = [run for folder in against for run in runs_in(folder)] or dirs_a
    open_set = [ref.endswith("/open_set") for ref in (a, b)]
    if open_set[0] != open_set[1]:
        raise HvkitError(f"{a} and {b}: an open_set evaluation compares with another one only")
    if all(open_set):
        result = _compare_open_set(dirs_a, dirs_b, a, b, resamples, confidence)
    else:
        result = _compare_pairs(dirs_a, dirs_b, a, b, resamples, confidence)
    diff = result["a_minus_b"]
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    names = [n for n in result["a"] if n not in ("ref", "runs") and n in diff]
    for key in ("a", "b"):
        runs = f" (mean of {result[key]['runs']} runs)" if result[key]["runs"] > 1 else ""
        click.echo(f"{key.upper()} {result[key]['ref']}{runs}: "
                   + "  ".join(f"{n} {result[key][n]:.4f}" for n in names))
    width = max(8, *(len(n) for n in names))
    source = "the test writers and the runs" if "runs" in diff else "the test writers"
    click.echo(f"A − B, {confidence:.0%} interval over {diff['resamples_used']} draws of {source}:")
    for n in names:
        low, high = diff[n]
        estimate = result["a"][n] - result["b"][n]
        click.echo(f"  {n:{width}s} {estimate:+.4f} ({low:+.4f} … {high:+.4f})  share of draws where A is not "
                   f"better: {diff[f'share_a_not_better_{n}']:.3f}")
