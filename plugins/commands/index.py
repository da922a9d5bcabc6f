"""``hvkit index build|search``: a FAISS index of a folder of handwriting images."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import click
import torch

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.evaluation import cosine_fusion_space
from hvkit.index import VectorIndex
from hvkit.registry import get_registry
from hvkit_plugins.commands.fitted_run import FittedRun
from hvkit_plugins.commands.sources import (embed_files, encoder_path, image_files, open_encoder, run_outputs,
                                            stage_features, test_views, tta_options)
from hvkit_plugins.stages.evaluate import fitted_verifier
from hvkit_plugins.stages.score_fusion import leaf_verifiers

INDEX_FILE, META_FILE = "index.npz", "index.json"


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def digest(settings: Any, files: list[Path]) -> str:
    """sha256 of JSON ``settings`` and the bytes of ``files``: what an index's vectors were computed from."""
    found = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for file in files:
        try:
            found.update(file.read_bytes())
        except OSError as exc:
            raise HvkitError(f"{file}: cannot read ({exc.strerror})") from None
    return found.hexdigest()


class ScoreSpace:
    """Vectors whose inner product, plus ``offset``, is a run's score of two images.

    A verifier with an embedding space (``cosine_pair``, ``wccn_pair``, ``pcaw_pair``) scores
    ``cos(W(e1 − μ), W(e2 − μ))``: the vectors are ``W(e − μ)`` normalised. A score fusion scores
    ``Σ_m w_m s_m + b``; with every ``w_m ≥ 0`` that is the inner product of its members' vectors
    each scaled by ``√w_m`` and joined, plus ``b`` (nested fusions likewise), so the index ranks
    by the fused score itself.
    """

    def __init__(self, run_dir: Path, stage: str, verifier: str | None, invert: bool, device: torch.device):
        self.run = FittedRun(run_dir)
        self.stage, self.verifier = stage, self.run.check(stage, verifier)
        self.invert, self.device = invert, device
        self.threshold = float(self.run.decision(self.stage, self.verifier)[0])
        if stage in self.run.fusions:
            try:
                leaves, inner = leaf_verifiers(self.run.outputs, self.run.outputs[stage]["metrics"]["fusion"]["weights"],
                                               stage)
            except ValueError as exc:
                raise HvkitError(f"{run_dir}: {exc}") from None
            self.offset = self.run.offset(stage) + inner
        else:
            leaves, self.offset = {(stage, self.verifier): 1.0}, 0.0
        for leaf_stage, leaf_verifier in leaves:
            if not hasattr(FittedRun.head_class(self.run.entry(leaf_stage, leaf_verifier)), "embed"):
                raise HvkitError(f"verifier {leaf_verifier!r} of stage {leaf_stage!r} scores pairs without an "
                                 "embedding space; an index needs one (cosine_pair, wccn_pair, pcaw_pair, "
                                 "correlation_pair)")
        self.parts = [(leaf_stage, leaf_verifier, weight) for (leaf_stage, leaf_verifier), weight in leaves.items()]

    def vectors(self, files: list[Path]) -> torch.Tensor:
        """The rows whose inner products score ``files`` pairwise (``offset`` aside)."""
        features: dict[str, torch.Tensor] = {}
        blocks = []
        for stage, verifier, _ in self.parts:
            if stage not in features:
                features[stage] = stage_features(self.run.run_dir, stage, self.run.outputs[stage], files, self.invert,
                                                 self.device)
            head = fitted_verifier(self.run.entry(stage, verifier), features[stage].shape[1], get_registry())
            with torch.no_grad():
                blocks.append(head.embed(features[stage]).cpu().numpy())
        return torch.from_numpy(cosine_fusion_space(blocks, [weight for *_, weight in self.parts])).float()

    def digest(self) -> str:
        """:func:`digest` of the parts, their weights, the offset, and each part stage's verifiers and encoder."""
        stages = dict.fromkeys(stage for stage, *_ in self.parts)
        files = [self.run.run_dir / self.run.outputs[stage][key] for stage in stages
                 for key in ("verifiers", "encoder") if self.run.outputs[stage].get(key)]
        return digest([self.parts, self.offset], files)

    def meta(self) -> dict[str, Any]:
        return {"run": str(self.run.run_dir.resolve()), "stage": self.stage, "verifier": self.verifier,
                "invert": self.invert, "digest": self.digest()}

    @classmethod
    def from_meta(cls, meta: dict[str, Any], device: torch.device) -> "ScoreSpace":
        return cls(Path(meta["run"]), meta["stage"], meta["verifier"], meta["invert"], device)


@click.group("index")
def index_command() -> None:
    """Build and search a FAISS index of handwriting images embedded by a trained encoder."""


@index_command.command("build")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Index folder.")
@click.option("--stage", help="Which stage's encoder (default: the last trained one), or an evaluation or "
              "score_fusion stage: index by its --verifier's score.")
@click.option("--verifier", help="With an evaluation --stage: the fitted verifier whose score the index ranks by "
              "(default: its cosine_pair, else its first; wccn_pair ranks writers best).")
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
    and whitened), so a neighbour's similarity is the verifier's score of the pair; with a
    score_fusion stage (non-negative weights), the fused score of the pair.
    """
    device = _device()
    files = image_files(images)
    outputs = run_outputs(source)
    found = outputs.get(stage, {}) if outputs is not None else {}
    if "verifiers" in found or "fusion" in found.get("metrics", {}):
        if features is not None or tta_shifts or tta_zooms:
            raise HvkitError(f"stage {stage!r} scores pairs by its own features and test-time views; "
                             "drop --features/--tta-shifts/--tta-zoom")
        space = ScoreSpace(source, stage, verifier, invert, device)
        vectors, meta, metric = space.vectors(files), space.meta(), "ip"
    else:
        if verifier is not None:
            raise HvkitError("--verifier needs --stage naming an evaluation or score_fusion stage of a run")
        views = test_views(tta_shifts, tta_zooms)
        checkpoint = encoder_path(source, stage, outputs)
        encoder, state = open_encoder(checkpoint, None, device)
        vectors = embed_files(encoder, state, files, device, features or "backbone", invert, views)
        meta = {"encoder": str(checkpoint.resolve()), "features": features or "backbone", "invert": invert,
                "tta": {"shifts": tta_shifts, "zooms": list(tta_zooms)}, "digest": digest(None, [checkpoint])}
        metric = "cosine"
    options = {"nlist": max(1, min(1024, len(files) // 39))} if kind == "ivf" else {}
    try:
        index = VectorIndex(vectors.shape[1], metric=metric, kind=kind, **options)
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

    An index built by a verifier or a fusion prints its scores and first its validation threshold.
    """
    if not (index_dir / META_FILE).is_file():
        raise HvkitError(f"{index_dir}: not an index folder (no {META_FILE}); build one with `hvkit index build`")
    meta = json.loads((index_dir / META_FILE).read_text())
    device = _device()
    files = image_files(queries)
    offset = 0.0
    if "stage" in meta:
        space = ScoreSpace.from_meta(meta, device)
        check_unchanged(index_dir, meta, space.digest(), f"stage {space.stage} of {space.run.run_dir}")
        vectors, offset = space.vectors(files), space.offset
        click.echo(f"scores: {space.verifier} of stage {space.stage}; same writer at >= {space.threshold:.4f}")
    else:
        check_unchanged(index_dir, meta, digest(None, [Path(meta["encoder"])]), f"encoder {meta['encoder']}")
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
                click.echo(f"  {score + offset:.4f}  {meta['files'][i]}")


def check_unchanged(index_dir: Path, meta: dict[str, Any], found: str, source: str) -> None:
    """A one-line error if what an index was built from has changed since (its queries would land in another space)."""
    if meta.get("digest", found) != found:
        raise HvkitError(f"{index_dir}: {source} has changed since the index was built (trained or evaluated "
                         "again); build the index again")
