"""``hvkit errors``: the test pairs a run's verifier got most confidently wrong, with their image files."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit_plugins.commands.fitted_run import FittedRun
from hvkit_plugins.stages.evaluate import load_pair_scores
from hvkit_plugins.stages.pair_files import load_pair_index


@click.command("errors")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--stage", help="Evaluation or score_fusion stage (default: the last evaluation with an encoder, "
              "else the last evaluation).")
@click.option("--verifier", help="Verifier name in that stage (default: its cosine_pair, else its first; a "
              "score_fusion stage has one, fused).")
@click.option("-k", "--top", type=click.IntRange(min=1), default=5, show_default=True,
              help="How many of each kind of error to list.")
@user_errors
def errors_command(run_dir: Path, stage: str | None, verifier: str | None, top: int) -> None:
    """List the test pairs a verifier got most confidently wrong at its validation threshold.

    False accepts (two writers scored as one) from the highest score down, false rejects (one
    writer scored as two) from the lowest up, each with its score and the two image files, so
    that they can be looked at — or explained with ``hvkit explain``.
    """
    fitted = FittedRun(run_dir)
    name = stage or fitted.default_stage()
    verifier = fitted.check(name, verifier)
    saved = fitted.outputs[name].get("pair_scores")
    if not saved:
        raise HvkitError(f"stage {name!r} of {run_dir} saved no test pair scores; re-run it: hvkit eval {run_dir} "
                         f"--stage {name}")
    path = run_dir / saved
    pairs, threshold = load_pair_scores(path)[verifier]
    index = load_pair_index(path)
    if index is None or threshold is None:
        missing = "which images make each pair" if index is None else "a validation threshold"
        stages = [*dict.fromkeys(s for s, _, _ in fitted.members(name)), name] if name in fitted.fusions else [name]
        raise HvkitError(f"{path} holds no record of {missing} (saved before hvkit kept it, or without "
                         f"validation writers); re-run: hvkit eval {run_dir} "
                         + " ".join(f"--stage {s}" for s in stages))
    accepted = pairs.scores >= threshold
    false_accepts = np.flatnonzero(~pairs.same & accepted)
    false_rejects = np.flatnonzero(pairs.same & ~accepted)
    different, same = int((~pairs.same).sum()), int(pairs.same.sum())
    click.echo(f"{name}/{verifier} on {len(pairs.scores)} test pairs at threshold {threshold:.4f}: "
               f"{len(false_accepts)} false accepts ({len(false_accepts) / max(different, 1):.1%} of different-writer "
               f"pairs), {len(false_rejects)} false rejects ({len(false_rejects) / max(same, 1):.1%} of same-writer "
               "pairs)")
    rows = [("most confident false accepts", false_accepts[np.argsort(-pairs.scores[false_accepts], kind="stable")]),
            ("most confident false rejects", false_rejects[np.argsort(pairs.scores[false_rejects], kind="stable")])]
    for title, found in rows:
        click.echo(f"{title}:")
        for row in found[:top]:
            click.echo(f"  score {pairs.scores[row]:.4f}  {index.files[index.first[row]]}  "
                       f"{index.files[index.second[row]]}")
    if not fitted.without_gradient(name, verifier) and any(Path(str(f)).is_file() for f in index.files[:1]):
        click.echo(f"explain one: hvkit explain {run_dir} FILE_A FILE_B --stage {name} --verifier {verifier}")
