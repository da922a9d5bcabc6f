"""``hvkit verify``: same writer or not, for two images, with a run's fitted verifier."""

from __future__ import annotations

import math
from pathlib import Path

import click
import torch

from hvkit.cli import user_errors
from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.evaluation import Calibration
from hvkit.registry import get_registry
from hvkit.engine.context import build
from hvkit_plugins.commands.sources import embed_files, handcrafted_files, open_encoder, stage_outputs
from hvkit_plugins.stages.test_views import TestViews


@click.command("verify")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stage", help="Evaluation stage whose verifier to use (default: the last one with an encoder, "
              "else the last one).")
@click.option("--verifier", default="cosine_pair", show_default=True, help="Verifier name in that stage.")
@click.option("--threshold", type=float, help="Decision threshold (default: the one chosen on validation writers).")
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@user_errors
def verify_command(source: Path, image_a: Path, image_b: Path, stage: str | None, verifier: str,
                   threshold: float | None, invert: bool) -> None:
    """Score whether two handwriting images share a writer, and decide at the validation threshold.

    SOURCE is a run directory (its evaluation stage's fitted verifier and threshold are used;
    a stage of hand-crafted features — pixels, HOG, GSC, LBP or the contour hinge — computes them
    from the two images read as its dataset was) or an encoder checkpoint (plain cosine
    similarity; give --threshold). When the run's verifier carries a calibration fitted on
    validation writers, the likelihood ratio p(score | one writer) / p(score | two writers) is
    printed too.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    files = [image_a, image_b]
    if source.is_dir() and (source / "stages").is_dir():
        evaluations = {n: o for n, o in stage_outputs(source).items() if "verifiers" in o}
        if not evaluations:
            raise HvkitError(f"{source}: no completed evaluation stage")
        name = stage or ([n for n, o in evaluations.items() if o.get("encoder")] or list(evaluations))[-1]
        if name not in evaluations:
            raise HvkitError(f"{source}: no evaluation stage {name!r}; have {', '.join(evaluations)}")
        outputs = evaluations[name]
        fitted = load_checkpoint(source / outputs["verifiers"])
        if verifier not in fitted:
            raise HvkitError(f"stage {name!r} has no verifier {verifier!r}; have {', '.join(fitted)}")
        entry = fitted[verifier]
        if hasattr(get_registry().get("head", entry["spec"]["name"]).factory, "score_pairs"):
            raise HvkitError(f"verifier {verifier!r} of stage {name!r} scores a pair among the other images of its "
                             "set; two files alone are none: choose a verifier that scores a pair by itself "
                             f"({', '.join(n for n in fitted if n != verifier)})")
        limit = threshold if threshold is not None else entry["threshold"]
        if outputs.get("encoder"):
            encoder, state = open_encoder(source / outputs["encoder"], None, device)
            emb = embed_files(encoder, state, files, device, outputs.get("features", "backbone"), invert,
                              TestViews(**outputs.get("tta", {})))
        else:
            emb = handcrafted_files(source, name, outputs, files, invert)
    else:
        encoder, state = open_encoder(source, None, device)
        entry, limit = None, threshold
        if limit is None:
            raise HvkitError("an encoder checkpoint has no validated threshold: give --threshold")
        emb = embed_files(encoder, state, files, device, "backbone", invert)
    if entry is None:
        score = float(torch.nn.functional.cosine_similarity(emb[:1], emb[1:]).item())
    else:
        head = build(get_registry(), "head", entry["spec"], in_dim=emb.shape[1])
        head.load_state_dict(entry["state"])
        head.eval()
        with torch.no_grad():
            out = head(emb[:1], emb[1:])
        score = float(out.softmax(dim=1)[0, 1] if out.dim() == 2 and out.shape[1] == 2 else out.reshape(-1)[0])
    same = score >= limit
    click.echo(f"score {score:.4f}  threshold {limit:.4f}  → {'same writer' if same else 'different writers'}")
    if entry is not None and entry.get("calibration"):  # runs before hvkit calibrated have none
        click.echo(likelihood_ratio_line(float(Calibration(**entry["calibration"]).log_lr(score))))


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
