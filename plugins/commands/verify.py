"""``hvkit verify``: same writer or not, for two images, with a run's fitted verifier."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.evaluation import Calibration
from hvkit.registry import get_registry
from hvkit_plugins.commands.fitted_run import FittedRun
from hvkit_plugins.commands.sources import embed_files, open_encoder, set_options, stage_features, wants_sets
from hvkit_plugins.evaluators.directions import directions
from hvkit_plugins.evaluators.set_verification import SET_SCORES, set_scores
from hvkit_plugins.stages.evaluate import fitted_verifier, space_embedding
from hvkit_plugins.stages.pair_training import same_writer_score


@click.command("verify")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@set_options("k against k, scored as the stage's set_verification scored its test trials.")
@click.option("--stage", help="Evaluation or score_fusion stage whose verifier to use (default: the last evaluation "
              "with an encoder, else the last evaluation).")
@click.option("--verifier", help="Verifier name in that stage (default: its cosine_pair, else its first; a "
              "score_fusion stage has one, fused).")
@click.option("--threshold", type=float, help="Decision threshold (default: the one chosen on validation writers).")
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@user_errors
def verify_command(source: Path, image_a: Path | None, image_b: Path | None, known: tuple[Path, ...],
                   questioned: tuple[Path, ...], stage: str | None, verifier: str | None, threshold: float | None,
                   invert: bool) -> None:
    """Score whether two handwriting images share a writer, and decide at the validation threshold.

    With --known and --questioned (k of each, in place of IMAGE_A IMAGE_B) SOURCE is a run whose
    evaluation stage ran set_verification with plots on: the two sets are scored as its test trials
    were (the cosine of their mean directions, by default, in the stage's ``space`` when it has one),
    against the threshold and likelihood ratio it fitted on the validation writers' trials of k images
    a side.

    SOURCE is a run directory (its evaluation stage's fitted verifier and threshold are used;
    a stage of hand-crafted features — pixels, HOG, GSC, LBP or the contour hinge — computes them
    from the two images read as its dataset was; a score_fusion stage scores the two images by
    each of its members and fuses those scores as it fused the test pairs') or an encoder
    checkpoint (plain cosine similarity; give --threshold). When the run's verifier carries a
    calibration fitted on validation writers, the likelihood ratio p(score | one writer) /
    p(score | two writers) is printed too.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wants_sets(image_a, image_b, known, questioned):
        verify_sets(source, stage, list(known), list(questioned), threshold, invert, device)
        return
    files = [image_a, image_b]
    if source.is_dir() and (source / "stages").is_dir():
        fitted = FittedRun(source)
        name = stage or fitted.default_stage()
        verifier = fitted.check(name, verifier)
        run = RunVerifiers(fitted, files, invert, device)
        score = run.score(name, verifier)
        limit, calibration = fitted.decision(name, verifier)
        limit = threshold if threshold is not None else limit
    else:
        if threshold is None:
            raise HvkitError("an encoder checkpoint has no validated threshold: give --threshold")
        encoder, state = open_encoder(source, None, device)
        emb = embed_files(encoder, state, files, device, "backbone", invert)
        score = float(torch.nn.functional.cosine_similarity(emb[:1], emb[1:]).item())
        limit, calibration, run = threshold, None, None
    same = score >= limit
    click.echo(f"score {score:.4f}  threshold {limit:.4f}  → {'same writer' if same else 'different writers'}")
    if calibration:  # runs before hvkit calibrated have none
        click.echo(likelihood_ratio_line(float(Calibration(**calibration).log_lr(score))))
    if run is not None and run.member_scores:
        click.echo("members: " + ", ".join(f"{m} {s:.4f}" for m, s in run.member_scores.items()))


@dataclass(frozen=True)
class SetScoring:
    """How evaluation ``stage`` of a run scored k known against k questioned images in its set_verification:
    ``space`` (``raw`` or the verifier whose space it scored in), ``centre`` (in that space), ``aggregate``,
    and for k its validation ``threshold`` and ``calibration`` (None before hvkit calibrated)."""

    stage: str
    k: int
    space: str
    centre: np.ndarray
    aggregate: str
    threshold: float
    calibration: dict[str, float] | None

    @classmethod
    def of(cls, fitted: FittedRun, stage: str | None, known: int, questioned: int) -> SetScoring:
        """The scoring of ``stage`` (default: the run's last evaluation) for sets of ``known`` and ``questioned``
        images, or a one-line error when the stage ran no set_verification that validated that size."""
        run_dir = fitted.run_dir
        name = stage or fitted.default_stage()
        outputs = fitted.outputs.get(name, {})
        sizes = outputs.get("metrics", {}).get("set_verification")
        path = run_dir / "stages" / name / SET_SCORES
        if sizes is None or not path.is_file():
            raise HvkitError(f"stage {name!r} of {run_dir} ran no set_verification with plots on; re-run it with "
                             f"one: hvkit eval {run_dir} --stage {name} "
                             f"--set 'stages.{name}.evaluators=[set_verification]'")
        found = sizes.get(f"k{known}", {})
        if questioned != known or "threshold" not in found:
            served = [key[1:] for key, v in sizes.items() if isinstance(v, dict) and "threshold" in v]
            raise HvkitError(f"give as many --questioned as --known images, a number stage {name!r} validated: "
                             f"{', '.join(served) or 'none'} (got {known} and {questioned})")
        with np.load(path) as saved:
            centre, aggregate = saved["centre"], str(saved["aggregate"])
        return cls(name, known, outputs["metrics"].get("space", "raw"), centre, aggregate, found["threshold"],
                   found.get("calibration"))

    def space_head(self, fitted: FittedRun, dim: int) -> torch.nn.Module | None:
        """The fitted verifier whose space the sets were scored in, or None for the features as they are."""
        return None if self.space == "raw" else fitted_verifier(fitted.entry(self.stage, self.space), dim,
                                                                get_registry())


def run_with_sets(run_dir: Path) -> FittedRun:
    """The finished run at ``run_dir``, or a one-line error: sets are scored by a run's evaluation stage."""
    if not (run_dir / "stages").is_dir():
        raise HvkitError(f"{run_dir}: --known and --questioned need a run directory")
    return FittedRun(run_dir)


def verify_sets(run_dir: Path, stage: str | None, known: list[Path], questioned: list[Path], threshold: float | None,
                invert: bool, device: torch.device) -> None:
    """Print the score of k known against k questioned images by ``stage``'s set_verification, its decision at
    the validation threshold (or ``threshold``) and the likelihood ratio of its validation calibration."""
    fitted = run_with_sets(run_dir)
    scoring = SetScoring.of(fitted, stage, len(known), len(questioned))
    k = scoring.k
    emb = stage_features(run_dir, scoring.stage, fitted.outputs[scoring.stage], [*known, *questioned], invert, device)
    head = scoring.space_head(fitted, emb.shape[1])
    if head is not None:  # the sets were scored in a fitted verifier's space: map the images there as the stage did
        emb = space_embedding(head, emb)
    rows = np.arange(k)
    score = float(set_scores(directions(emb.numpy(), scoring.centre), np.zeros(2 * k, np.int64),
                             [(rows, rows + k, True)], scoring.aggregate).scores[0])
    limit = threshold if threshold is not None else scoring.threshold
    click.echo(f"score {score:.4f}  threshold {limit:.4f}  ({k} against {k}) → "
               f"{'same writer' if score >= limit else 'different writers'}")
    if scoring.calibration:
        click.echo(likelihood_ratio_line(float(Calibration(**scoring.calibration).log_lr(score))))


class RunVerifiers:
    """A run's fitted verifiers and score fusions applied to two image files, each stage's features computed once."""

    def __init__(self, run: FittedRun, files: list[Path], invert: bool, device: torch.device):
        self.run = run
        self.files, self.invert, self.device = files, invert, device
        self.member_scores: dict[str, float] = {}
        self._features: dict[str, torch.Tensor] = {}

    def score(self, stage: str, verifier: str) -> float:
        """The two files' score by ``stage``'s ``verifier``; a fusion's members' scores land in ``member_scores``."""
        if stage in self.run.fusions:
            parts = {(s, v): (w, self.score(s, v)) for s, v, w in self.run.members(stage)}
            self.member_scores.update({f"{s}/{v}": score for (s, v), (_, score) in parts.items()})
            return sum(w * score for w, score in parts.values()) + self.run.offset(stage)
        entry = self.run.entry(stage, verifier)
        emb = self._embeddings(stage)
        head = fitted_verifier(entry, emb.shape[1], get_registry())
        with torch.no_grad():
            return float(same_writer_score(head(emb[:1], emb[1:]))[0])

    def _embeddings(self, stage: str) -> torch.Tensor:
        if stage not in self._features:
            self._features[stage] = stage_features(self.run.run_dir, stage, self.run.outputs[stage], self.files,
                                                   self.invert, self.device)
        return self._features[stage]


def likelihood_ratio_line(log_lr: float) -> str:
    """The LR of a natural log LR in words: how many times more likely the score is for one writer than for two."""
    log10 = log_lr / math.log(10)

    def times(exponent: float) -> str:
        return f"{10 ** exponent:.3g}" if abs(exponent) < 300 else f"10^{exponent:.1f}"

    if times(abs(log10)) == "1":
        meaning = "the score is about as likely for one writer as for two"
    elif log10 > 0:
        meaning = f"the score is {times(log10)} times more likely for one writer than for two"
    else:
        meaning = f"the score is {times(-log10)} times more likely for two writers than for one"
    return f"LR {times(log10)} (log10 {log10:.2f}): {meaning}"
