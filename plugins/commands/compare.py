"""``hvkit compare``: is one model's verification better than another's, beyond test-writer noise?"""

from __future__ import annotations

import json
from pathlib import Path

import click

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.evaluation import PairSet, RocCounts
from hvkit.evaluation.bootstrap import paired_writer_bootstrap
from hvkit_plugins.stages.evaluate import PAIR_SCORES, load_pair_scores


def _load(run_dir: Path, ref: str) -> tuple[PairSet, float | None]:
    stage, _, verifier = ref.partition("/")
    if not stage or not verifier:
        raise HvkitError(f"{ref!r} must read STAGE/VERIFIER, e.g. fused_10pct/cosine_pair")
    path = run_dir / "stages" / stage / PAIR_SCORES
    if not path.is_file():
        raise HvkitError(f"{path}: no test pair scores; {stage!r} is not an evaluate stage of this run, or it ran "
                         f"before hvkit saved them (re-run it: hvkit eval {run_dir} --stage {stage})")
    found = load_pair_scores(path)
    if verifier not in found:
        raise HvkitError(f"{path}: no verifier {verifier!r}; it holds {', '.join(sorted(found))}")
    return found[verifier]


def _point(pairs: PairSet, threshold: float | None) -> dict[str, float]:
    roc = RocCounts.from_scores(pairs.scores, pairs.same)
    out = {"roc_auc": roc.auc(), "eer": roc.eer()}
    if threshold is not None:
        out["accuracy"] = float(((pairs.scores >= threshold) == pairs.same).mean())
    return out


@click.command("compare")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("a")
@click.argument("b")
@click.option("--against", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
              help="Run directory of B (default: RUN_DIR); both must have scored the same test pairs.")
@click.option("--resamples", type=click.IntRange(min=1), default=1000, show_default=True)
@click.option("--confidence", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95,
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@user_errors
def compare_command(run_dir: Path, a: str, b: str, against: Path | None, resamples: int, confidence: float,
                    as_json: bool) -> None:
    """Compare verifier A with B (each STAGE/VERIFIER) on the same test pairs, by a paired writer bootstrap.

    Prints each one's accuracy (at its validation threshold), ROC AUC and EER, and the
    interval of A − B over draws of the test writers, with the share of draws where A is not
    better (a one-sided bootstrap p-value).
    """
    pairs_a, threshold_a = _load(run_dir, a)
    pairs_b, threshold_b = _load(against or run_dir, b)
    try:
        diff = paired_writer_bootstrap(pairs_a, pairs_b, threshold_a, threshold_b, resamples, confidence)
    except ValueError as exc:
        raise HvkitError(f"{a} and {b}: {exc}") from None
    result = {"a": {"ref": a, **_point(pairs_a, threshold_a)}, "b": {"ref": b, **_point(pairs_b, threshold_b)},
              "a_minus_b": diff}
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    names = [n for n in ("accuracy", "roc_auc", "eer") if n in diff]
    for key in ("a", "b"):
        click.echo(f"{key.upper()} {result[key]['ref']}: " + "  ".join(f"{n} {result[key][n]:.4f}" for n in names))
    click.echo(f"A − B, {confidence:.0%} interval over {diff['resamples_used']} draws of the test writers:")
    for n in names:
        low, high = diff[n]
        estimate = result["a"][n] - result["b"][n]
        click.echo(f"  {n:8s} {estimate:+.4f} ({low:+.4f} … {high:+.4f})  share of draws where A is not better: "
                   f"{diff[f'share_a_not_better_{n}']:.3f}")
