"""``hvkit index build|search``: a FAISS index of a folder of handwriting images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
import torch

from hvkit.cli import user_errors
from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.index import VectorIndex
from hvkit.registry import get_registry
from hvkit_plugins.commands.sources import (embed_files, encoder_path, fitted_verifier, image_files, open_encoder,
                                            run_outputs, stage_features, stage_outputs, test_views, tta_options)

INDEX_FILE, META_FILE = "index.npz", "index.json"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


class VerifierSpace:
    """The space whose cosine a fitted verifier of an evaluation stage scores: ``head.embed`` of the
    stage's features (``W(e − μ)`` for ``cosine_pair``, ``wccn_pair``, ``pcaw_pair``)."""

    def __init__(self, run_dir: Path, stage: str, verifier: str, invert: bool, device: torch.device):
        outputs = stage_outputs(run_dir)
        if stage not in outputs or "verifiers" not in outputs[stage]:
            raise HvkitError(f"{run_dir}: no evaluation stage {stage!r}")
        fitted = load_checkpoint(run_dir / outputs[stage]["verifiers"])
        spaces = [n for n, e in fitted.items()
                  if hasattr(get_registry().get("head", e["spec"]["name"]).factory, "embed")]
        if verifier not in spaces:
            problem = (f"stage {stage!r} has no verifier {verifier!r}" if verifier not in fitted else
                       f"verifier {verifier!r} of stage {stage!r} scores pairs without an embedding space")
            raise HvkitError(f"{problem}; verifiers with one: {', '.join(spaces) or 'none'}")
        self.run_dir, self.stage, self.verifier, self.invert, self.device = run_dir, stage, verifier, invert, device
        self.outputs, self.entry = outputs[stage], fitted[verifier]

    @property
    def threshold(self) -> float:
        """The verifier's decision threshold, chosen on the validation writers."""
        return float(self.entry["threshold"])

    def vectors(self, files: list[Path]) -> torch.Tensor:
        features = stage_features(self.run_dir, self.stage, self.outputs, files, self.invert, self.device)
        with torch.no_grad():
            return fitted_verifier(self.entry, features.shape[1]).embed(features)

    def meta(self) -> dict[str, Any]:
        return {"run": str(self.run_dir.resolve()), "stage": self.stage, "verifier": self.verifier,
                "threshold": self.threshold, "invert": self.invert}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], device: torch.device) -> "VerifierSpace":
        return cls(Path(meta["run"]), meta["stage"], meta["verifier"], meta["invert"], device)


@click.group("index")
def index_command() -> None:
    """Build and search a FAISS index of handwriting images embedded by a trained encoder."""


@index_command.command("build")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--stage", help="Which stage's encoder (default: the last trained one), or an evaluation stage: "
              "index in the space of its --verifier.")
@click.option("--verifier", help="With an evaluation --stage: the fitted verifier whose cosine the index scores "
              "(default: cosine_pair; wccn_pair ranks writers best).")
@click.option("--kind", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat", show_default=True)
@click.option("--features", type=click.Choice(["backbone", "head"]),
              help="The encoder's output to index  [default: backbone].")
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@tta_options
@user_errors
def build_index(source: Path, images: tuple[Path, ...], out: Path, stage: str | None, verifier: str | None,
                kind: str, features: str | None, invert: bool, tta_shifts: int, tta_zooms: tuple[float, ...]) -> None:
    """Embed every image under IMAGES with SOURCE's encoder and index them (cosine similarity).

    ``--tta-shifts``/``--tta-zoom`` embed each image as the mean over its test-time views;
    the index remembers them and embeds its queries the same way. With ``--stage`` naming an
    evaluation stage of a run, each image is mapped as that stage's fitted ``--verifier`` maps it
    (its features — an encoder's, with the stage's own test-time views, or hand-crafted — centred
    and whitened), so a neighbour's similarity is the verifier's score of the pair.
    """
    device = _device()
    files = image_files(images)
    outputs = run_outputs(source)
    if outputs is not None and stage in outputs and "verifiers" in outputs[stage]:
        if features is not None or tta_shifts or tta_zooms:
            raise HvkitError(f"stage {stage!r} is an evaluation: its features and test-time views are its own; "
                             "drop --features/--tta-shifts/--tta-zoom")
        space = VerifierSpace(source, stage, verifier or "cosine_pair", invert, device)
        vectors, meta = space.vectors(files), space.meta()
    else:
        if verifier is not None:
            raise HvkitError("--verifier needs --stage naming an evaluation stage of a run")
        views = test_views(tta_shifts, tta_zooms)
        checkpoint = encoder_path(source, stage, outputs)
        encoder, state = open_encoder(checkpoint, None, device)
        vectors = embed_files(encoder, state, files, device, features or "backbone", invert, views)
        meta = {"encoder": str(checkpoint.resolve()), "features": features or "backbone", "invert": invert,
                "tta": {"shifts": tta_shifts, "zooms": list(tta_zooms)}}
    options = {"nlist": max(1, min(1024, len(files) // 39))} if kind == "ivf" else {}
    try:
        index = VectorIndex(vectors.shape[1], metric="cosine", kind=kind, **options)
        index.add(vectors.numpy())
    except ValueError as exc:
        raise HvkitError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    index.save(out / INDEX_FILE)
    (out / META_FILE).write_text(json.dumps(meta | {"files": [str(f) for f in files]}, indent=1))
    click.echo(f"indexed {len(files)} images ({kind}, dimension {vectors.shape[1]}) in {out}")


@index_command.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("queries", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per query.")
@user_errors
def search_index(index_dir: Path, queries: tuple[Path, ...], k: int) -> None:
    """Print the K most similar indexed images of each query image, with cosine similarities.

    An index built in a verifier's space prints that verifier's scores and its validation threshold first.
    """
    if not (index_dir / META_FILE).is_file():
        raise HvkitError(f"{index_dir}: not an index folder (no {META_FILE}); build one with `hvkit index build`")
    meta = json.loads((index_dir / META_FILE).read_text())
    device = _device()
    files = image_files(queries)
    if "stage" in meta:
        space = VerifierSpace.from_meta(meta, device)
        vectors = space.vectors(files)
        click.echo(f"scores: {space.verifier} of stage {space.stage}; same writer at >= {space.threshold:.4f}")
    else:
        encoder, state = open_encoder(Path(meta["encoder"]), None, device)
        tta = meta.get("tta", {})
        views = test_views(tta.get("shifts", 0), tuple(tta.get("zooms", ())))
        vectors = embed_files(encoder, state, files, device, meta["features"], meta["invert"], views)
    index = VectorIndex.load(index_dir / INDEX_FILE)
    scores, ids = index.search(vectors.numpy(), min(k, index.ntotal))
    for query, row_scores, row_ids in zip(files, scores, ids):
        click.echo(str(query))
        for score, i in zip(row_scores, row_ids):
            if i >= 0:
                click.echo(f"  {score:.4f}  {meta['files'][i]}")
