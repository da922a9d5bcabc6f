"""What the commands read: an encoder from a run, a stage or a checkpoint, and image files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import click
import torch

from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit_plugins.datasets.reading import read_images
from hvkit_plugins.stages.encoder import ENCODER_FILE, Encoder, embed, load_encoder
from hvkit_plugins.stages.handcrafted import HANDCRAFTED
from hvkit_plugins.stages.test_views import TestViews

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".gif"}


def stage_outputs(run_dir: Path) -> dict[str, dict[str, Any]]:
    """Every completed stage's outputs in recipe order."""
    found = {}
    for outputs in sorted((run_dir / "stages").glob("*/outputs.json"), key=lambda p: p.stat().st_mtime):
        found[outputs.parent.name] = json.loads(outputs.read_text())
    return found


def run_outputs(source: Path) -> dict[str, dict[str, Any]] | None:
    """:func:`stage_outputs` if ``source`` is a run directory, else None."""
    return stage_outputs(source) if source.is_dir() and (source / "stages").is_dir() else None


def encoder_path(source: Path, stage: str | None, outputs: dict[str, dict[str, Any]] | None = None) -> Path:
    """The encoder checkpoint that ``source`` (checkpoint, stage directory or run directory) names.

    ``outputs``: the run's :func:`stage_outputs`, when the caller has read them already.
    """
    if source.is_file():
        return source
    if (source / ENCODER_FILE).is_file() and stage is None:
        return source / ENCODER_FILE
    if not (source / "stages").is_dir():
        raise HvkitError(f"{source}: not an encoder checkpoint, a stage directory or a run directory")
    outputs = stage_outputs(source) if outputs is None else outputs
    if stage is not None:
        if stage not in outputs or "encoder" not in outputs[stage] or outputs[stage]["encoder"] is None:
            with_encoder = [n for n, o in outputs.items() if o.get("encoder")]
            raise HvkitError(f"{source}: stage {stage!r} has no encoder; stages with one: {', '.join(with_encoder)}")
        return source / outputs[stage]["encoder"]
    trained = [o["encoder"] for o in outputs.values() if o.get("encoder") and "verifiers" not in o]
    if not trained:
        raise HvkitError(f"{source}: no completed stage saved an encoder")
    return source / trained[-1]


def open_encoder(source: Path, stage: str | None, device: torch.device) -> tuple[Encoder, dict[str, Any]]:
    return load_encoder(encoder_path(source, stage), get_registry(), device)


def image_files(paths: tuple[Path, ...] | list[Path]) -> list[Path]:
    """The image files among ``paths``, folders searched recursively, in sorted order."""
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            files.append(path)
        else:
            raise HvkitError(f"image not found: {path}")
    if not files:
        raise HvkitError(f"no images in {', '.join(str(p) for p in paths)}")
    return files


def read_files(files: list[Path], input_format: dict[str, Any], invert: bool) -> torch.Tensor:
    """uint8 (N, C, H, W) images of files, read as a run's dataset was
    (:func:`~hvkit_plugins.stages.encoder.input_format`)."""
    try:
        images, _ = read_images(files, input_format.get("image_size", 64), int(input_format["in_channels"]), invert,
                                keep_aspect=bool(input_format.get("keep_aspect", False)))
    except ValueError as exc:
        raise HvkitError(str(exc)) from None
    return images


def embed_files(encoder: Encoder, state: dict[str, Any], files: list[Path], device: torch.device,
                features: str, invert: bool, views: TestViews | None = None) -> torch.Tensor:
    """Embeddings of image files, preprocessed as the encoder's training data was (``views``: as :func:`embed`)."""
    return embed(encoder, read_files(files, state, invert), device, features, views=views)


def is_handcrafted(outputs: dict[str, Any] | None) -> bool:
    """Whether a stage's ``outputs`` are those of a stage that scored hand-crafted features."""
    return outputs is not None and outputs.get("features") in HANDCRAFTED


def handcrafted_files(source: Path, stage: str, outputs: dict[str, Any], files: list[Path],
                      invert: bool) -> torch.Tensor:
    """The hand-crafted features (``HANDCRAFTED``) a stage scored, of image files read as its dataset was."""
    if "input" not in outputs:
        raise HvkitError(f"{source}: stage {stage!r} scored {outputs.get('features')} features before runs recorded "
                         f"how their images were read; run it again: hvkit eval {source} --stage {stage}")
    return HANDCRAFTED[outputs["features"]](read_files(files, outputs["input"], invert),
                                            **outputs.get("feature_options", {}))


def stage_features(run_dir: Path, stage: str, outputs: dict[str, Any], files: list[Path], invert: bool,
                   device: torch.device) -> torch.Tensor:
    """The features evaluation ``stage`` scored, of image files: its encoder's (with its ``features`` and
    test-time views) or its hand-crafted ones."""
    if outputs.get("encoder"):
        encoder, state = load_encoder(run_dir / outputs["encoder"], get_registry(), device)
        return embed_files(encoder, state, files, device, outputs.get("features", "backbone"), invert,
                           TestViews(**outputs.get("tta", {})))
    return handcrafted_files(run_dir, stage, outputs, files, invert)


def tta_options(command: Callable) -> Callable:
    """``--tta-shifts`` and ``--tta-zoom``: the ``evaluate`` stage's test-time views, for a command that embeds."""
    command = click.option("--tta-zoom", "tta_zooms", type=float, multiple=True,
                           help="Also average a copy zoomed by this factor (repeatable).")(command)
    return click.option("--tta-shifts", type=click.IntRange(min=0), default=0, show_default=True,
                        help="Also average the image moved by this many pixels left, right, up and down.")(command)


def set_options(known: str) -> Callable[[Callable], Callable]:
    """``--known`` (described by ``known``) and ``--questioned``: k images of each, in place of two images."""
    def decorate(command: Callable) -> Callable:
        command = click.option("--questioned", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                               multiple=True, help="A questioned image (repeatable).")(command)
        return click.option("--known", type=click.Path(exists=True, dir_okay=False, path_type=Path), multiple=True,
                            help=f"A known image of the hand (repeatable), against as many --questioned: {known}"
                            )(command)
    return decorate


def wants_sets(image_a: Path | None, image_b: Path | None, known: tuple[Path, ...],
               questioned: tuple[Path, ...]) -> bool:
    """Whether a command of :func:`set_options` was given sets rather than two images; a one-line error when it
    was given both, or neither in full."""
    if known or questioned:
        if image_a is not None:
            raise HvkitError("give IMAGE_A IMAGE_B or --known … --questioned …, not both")
        return True
    if image_b is None:
        raise HvkitError("give two images, IMAGE_A IMAGE_B, or --known … --questioned …")
    return False


def test_views(shifts: int, zooms: tuple[float, ...]) -> TestViews | None:
    """The views of ``--tta-shifts``/``--tta-zoom``, or None for the image alone."""
    if not shifts and not zooms:
        return None
    try:
        return TestViews(shifts=shifts, zooms=list(zooms))
    except ValueError as exc:
        raise HvkitError(str(exc)) from None
