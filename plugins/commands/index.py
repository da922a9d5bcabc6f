"""``hvkit index build|search``: a FAISS index of a folder of handwriting images."""

from __future__ import annotations

import json
from pathlib import Path

import click
import torch

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.index import VectorIndex
from hvkit_plugins.commands.sources import (embed_files, encoder_path, image_files, open_encoder, test_views,
                                            tta_options)

INDEX_FILE, META_FILE = "index.npz", "index.json"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@click.group("index")
def index_command() -> None:
    """Build and search a FAISS index of handwriting images embedded by a trained encoder."""


@index_command.command("build")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--stage", help="Which stage's encoder (default: the last trained one).")
@click.option("--kind", type=click.Choice(["flat", "ivf", "hnsw"]), default="flat", show_default=True)
@click.option("--features", type=click.Choice(["backbone", "head"]), default="backbone", show_default=True)
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@tta_options
@user_errors
def build_index(source: Path, images: tuple[Path, ...], out: Path, stage: str | None, kind: str,
                features: str, invert: bool, tta_shifts: int, tta_zooms: tuple[float, ...]) -> None:
    """Embed every image under IMAGES with SOURCE's encoder and index them (cosine similarity).

    ``--tta-shifts``/``--tta-zoom`` embed each image as the mean over its test-time views;
    the index remembers them and embeds its queries the same way.
    """
    device = _device()
    views = test_views(tta_shifts, tta_zooms)
    checkpoint = encoder_path(source, stage)
    encoder, state = open_encoder(checkpoint, None, device)
    files = image_files(images)
    vectors = embed_files(encoder, state, files, device, features, invert, views)
    options = {"nlist": max(1, min(1024, len(files) // 39))} if kind == "ivf" else {}
    try:
        index = VectorIndex(vectors.shape[1], metric="cosine", kind=kind, **options)
        index.add(vectors.numpy())
    except ValueError as exc:
        raise HvkitError(str(exc)) from None
    out.mkdir(parents=True, exist_ok=True)
    index.save(out / INDEX_FILE)
    (out / META_FILE).write_text(json.dumps({"encoder": str(checkpoint.resolve()), "features": features,
                                             "invert": invert, "tta": {"shifts": tta_shifts, "zooms": list(tta_zooms)},
                                             "files": [str(f) for f in files]}, indent=1))
    click.echo(f"indexed {len(files)} images ({kind}, dimension {vectors.shape[1]}) in {out}")


@index_command.command("search")
@click.argument("index_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("queries", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("-k", "k", type=click.IntRange(min=1), default=5, show_default=True, help="Neighbours per query.")
@user_errors
def search_index(index_dir: Path, queries: tuple[Path, ...], k: int) -> None:
    """Print the K most similar indexed images of each query image, with cosine similarities."""
    if not (index_dir / META_FILE).is_file():
        raise HvkitError(f"{index_dir}: not an index folder (no {META_FILE}); build one with `hvkit index build`")
    meta = json.loads((index_dir / META_FILE).read_text())
    device = _device()
    encoder, state = open_encoder(Path(meta["encoder"]), None, device)
    files = image_files(queries)
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
