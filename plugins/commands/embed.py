"""``hvkit embed``: embeddings of image files from a trained encoder."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit_plugins.commands.sources import (embed_files, encoder_path, handcrafted_files, image_files, is_handcrafted,
                                            run_outputs, test_views, tta_options)
from hvkit_plugins.stages.encoder import load_encoder


@click.command("embed")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Output .npy file.")
@click.option("--stage", help="Which stage's encoder (default: the last trained one), or a stage of hand-crafted "
              "features.")
@click.option("--features", type=click.Choice(["backbone", "head"]), default="backbone", show_default=True)
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@tta_options
@user_errors
def embed_command(source: Path, images: tuple[Path, ...], out: Path, stage: str | None, features: str,
                  invert: bool, tta_shifts: int, tta_zooms: tuple[float, ...]) -> None:
    """Embed images with the encoder of a run, a stage or a checkpoint; writes (N, D) .npy and a file list.

    With ``--tta-shifts``/``--tta-zoom`` each embedding is the mean over the image and its
    shifted and zoomed copies, as the ``evaluate`` stage's ``tta`` option. A ``--stage`` of
    hand-crafted features (pixels, HOG, GSC, LBP, the contour hinge) computes them, with its options.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    views = test_views(tta_shifts, tta_zooms)
    files = image_files(images)
    outputs = run_outputs(source)
    found = outputs.get(stage) if outputs is not None and stage is not None else None
    if is_handcrafted(found):
        if views is not None or features != "backbone":
            raise HvkitError(f"stage {stage!r} computes {found['features']} features: --features and "
                             "--tta-shifts/--tta-zoom are for a network's embeddings")
        vectors = handcrafted_files(source, stage, found, files, invert).numpy()
    else:
        encoder, state = load_encoder(encoder_path(source, stage, outputs), get_registry(), device)
        vectors = embed_files(encoder, state, files, device, features, invert, views).numpy()
    np.save(out, vectors)
    out.with_suffix(".txt").write_text("\n".join(str(f) for f in files) + "\n")
    click.echo(f"{len(files)} embeddings of dimension {vectors.shape[1]} → {out} (files: {out.with_suffix('.txt')})")
