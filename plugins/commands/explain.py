"""``hvkit explain``: which strokes of two handwriting images drove a run's verifier to its score."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from hvkit.cli import user_errors
from hvkit.errors import HvkitError
from hvkit.evaluation.attribution import integrated_gradients
from hvkit.evaluation.plots import new_figure
from hvkit.registry import get_registry
from hvkit_plugins.commands.fitted_run import FittedRun
from hvkit_plugins.commands.sources import open_encoder, read_files, set_options, wants_sets
from hvkit_plugins.commands.verify import SetScoring, run_with_sets
from hvkit_plugins.stages.encoder import load_encoder, to_float
from hvkit_plugins.stages.evaluate import fitted_verifier
from hvkit_plugins.stages.pair_training import same_writer_score
from hvkit_plugins.stages.score_fusion import FUSED
from hvkit_plugins.stages.test_views import TestViews


@click.command("explain")
@click.argument("source", type=click.Path(exists=True, path_type=Path))
@click.argument("image_a", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.argument("image_b", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@set_options("the sets' score as hvkit verify gives it, each image explained with the others held fixed.")
@click.option("--stage", help="Evaluation stage with an encoder whose verifier to explain (default: the last one).")
@click.option("--verifier", help="Verifier name in that stage (default: its cosine_pair, else its first).")
@click.option("--threshold", type=float, help="Decision threshold (default: the one chosen on validation writers).")
@click.option("--steps", type=click.IntRange(min=1), default=64, show_default=True,
              help="Points on the path from a blank page to each image (integrated gradients).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=Path("explain.png"),
              show_default=True, help="The figure; the attributions are saved beside it as .npz.")
@click.option("--invert/--no-invert", default=True, show_default=True, help="Dark ink on light paper.")
@user_errors
def explain_command(source: Path, image_a: Path | None, image_b: Path | None, known: tuple[Path, ...],
                    questioned: tuple[Path, ...], stage: str | None, verifier: str | None, threshold: float | None,
                    steps: int, out: Path, invert: bool) -> None:
    """Show which strokes of IMAGE_A and IMAGE_B raised or lowered a run's "same writer" score.

    Each image gets integrated gradients (Sundararajan et al. 2017) of the verifier's score with
    the other image held fixed, from a blank page: a pixel's attribution is its share of
    ``score(A, B) - score(blank, B)`` (for A), and the shares add up to that difference up to the
    path integral's error, printed as a check. Positive (red) strokes make the two look like one
    writer's, negative (blue) ones like two writers'; blank paper gets none.

    SOURCE is a run directory — an evaluation stage's pair verifiers on its network's features (the
    SSL-HV head, the cosines), or a score fusion of such verifiers, whose map is its members' maps
    weighted as it weighs their scores (integrated gradients are linear in the score); not
    hand-crafted features, which have no gradient to follow — or an encoder checkpoint, whose plain
    cosine is explained as ``hvkit verify`` scores it (give --threshold for a decision).

    With --known and --questioned (k of each, in place of IMAGE_A IMAGE_B) SOURCE is a run whose
    evaluation stage with an encoder ran set_verification with plots on: the two sets' score is the
    one ``hvkit verify --known … --questioned …`` gives, and each of the 2k images is explained with
    the other 2k − 1 held fixed, so its attributions add up to what its strokes add to the sets' score.
    """
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if wants_sets(image_a, image_b, known, questioned):
        explain_sets(source, stage, list(known), list(questioned), threshold, steps, out, invert, device)
        return
    if source.is_dir() and (source / "stages").is_dir():
        fitted = FittedRun(source)
        name, verifier = _explained(fitted, stage, verifier)
        explainer = explainer_of(fitted, name, verifier, device)
        limit = fitted.decision(name, verifier)[0] if threshold is None else threshold
        label = f"{name}/{verifier}"
    else:
        encoder, state = open_encoder(source, None, device)
        explainer = Explainer(Network(encoder, "backbone", TestViews(), state), PlainCosine())
        limit, label = threshold, "cosine"
    images = to_float(read_files([image_a, image_b], explainer.input, invert), device)
    attribution, ends = explainer.attribute(images, steps)
    shares = [a.sum(dim=0).cpu().numpy() for a in attribution]  # summed over channels: one map an image
    ends = ends.cpu().numpy()
    score_ab = float(ends[0][1])
    decision = "" if limit is None else (f"  threshold {limit:.4f}  → "
                                         f"{'same writer' if score_ab >= limit else 'different writers'}")
    click.echo(f"{label}: score {score_ab:.4f}{decision}")
    inked = images.sum(dim=1).cpu().numpy()
    for side, path, share, (blank, full), image in zip("AB", (image_a, image_b), shares, ends, inked):
        click.echo(f"{side} ({path.name}): strokes add {full - blank:+.4f} to the score of a blank page "
                   f"({blank:.4f}); {shares_text(share, image)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), attribution_a=shares[0], attribution_b=shares[1], images=inked,
             blank_scores=np.array([ends[0][0], ends[1][0]]), score=score_ab,
             threshold=np.nan if limit is None else limit)
    shown = "" if limit is None else f" (threshold {limit:.3f})"
    plot_explanation(inked, shares, (image_a.name, image_b.name), f"{label}: score {score_ab:.3f}{shown}", out)
    click.echo(f"wrote {out} and {out.with_suffix('.npz')}")


def explain_sets(run_dir: Path, stage: str | None, known: list[Path], questioned: list[Path],
                 threshold: float | None, steps: int, out: Path, invert: bool, device: torch.device) -> None:
    """Explain k known against k questioned images by ``stage``'s set_verification (:class:`SetExplainer`):
    print the score, its decision and each image's share, and write the figure and the .npz."""
    fitted = run_with_sets(run_dir)
    scoring = SetScoring.of(fitted, stage, len(known), len(questioned))
    _explained(fitted, scoring.stage, None if scoring.space == "raw" else scoring.space)
    network = Network.of(fitted, scoring.stage, device)
    space = scoring.space_head(fitted, network.dim(device))
    explainer = SetExplainer(network, None if space is None else space.to(device), scoring.centre, scoring.aggregate)
    files = [*known, *questioned]
    images = to_float(read_files(files, explainer.input, invert), device)
    attribution, ends = explainer.attribute(images, steps)
    shares = [a.sum(dim=0).cpu().numpy() for a in attribution]
    ends = ends.cpu().numpy()
    score, k = float(ends[0][1]), scoring.k
    limit = scoring.threshold if threshold is None else threshold
    where = "" if scoring.space == "raw" else f" in the {scoring.space} space"
    label = f"{scoring.stage}: {k} against {k} ({scoring.aggregate}{where})"
    click.echo(f"{label}: score {score:.4f}  threshold {limit:.4f}  → "
               f"{'same writer' if score >= limit else 'different writers'}")
    inked = images.sum(dim=1).cpu().numpy()
    names = [f"{'known' if i < k else 'questioned'} {i % k + 1} ({path.name})" for i, path in enumerate(files)]
    for name, share, (blank, full), image in zip(names, shares, ends, inked):
        click.echo(f"{name}: strokes add {full - blank:+.4f} to the score with it blank ({blank:.4f}); "
                   f"{shares_text(share, image)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez(out.with_suffix(".npz"), attributions=np.stack(shares), images=inked, blank_scores=ends[:, 0],
             score=score, threshold=limit, known=k, names=np.array([path.name for path in files]))
    plot_explanation(inked, shares, names, f"{label}: score {score:.3f} (threshold {limit:.3f})", out)
    click.echo(f"wrote {out} and {out.with_suffix('.npz')}")


def _explained(fitted: FittedRun, stage: str | None, verifier: str | None) -> tuple[str, str]:
    """The stage (by default the last evaluation with an encoder) and verifier to explain, or a one-line error
    when the stage, or a member of a fusion, has no gradient to follow."""
    name = stage or fitted.default_stage()
    verifier = fitted.check(name, verifier)
    without = fitted.without_gradient(name, verifier)
    if without:
        explainable = [n for n in fitted.evaluations if fitted.outputs[n].get("encoder")]
        explainable += [n for n in fitted.fusions if not fitted.without_gradient(n, FUSED)]
        kind = "an evaluation of features computed without a network"
        what = (f"stage {name!r} of {fitted.run_dir} is {kind}" if name not in fitted.fusions else
                f"stage {name!r} of {fitted.run_dir} fuses {', '.join(f'{s}/{v}' for s, v in without)}, {kind}")
        raise HvkitError(f"{what}: there is no gradient to follow; explain a stage whose verifiers all embed with "
                         f"an encoder: {', '.join(explainable) or 'the run has none'}")
    return name, verifier


def explainer_of(fitted: FittedRun, stage: str, verifier: str, device: torch.device) -> Explainer | FusedExplainer:
    """The explainer of ``verifier`` of ``stage``: an :class:`Explainer`, or for a score fusion a
    :class:`FusedExplainer` of its members' (nested fusions too)."""
    if stage not in fitted.fusions:
        return Explainer.of(fitted, stage, verifier, device)
    members = [(w, explainer_of(fitted, s, v, device)) for s, v, w in fitted.members(stage)]
    return FusedExplainer(members, fitted.offset(stage))


class PlainCosine(torch.nn.Module):
    """The uncentred cosine of two embeddings: how ``hvkit verify`` scores a pair with an encoder checkpoint."""

    def forward(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cosine_similarity(first, second)


class Network:
    """A run's encoder as an evaluation stage embedded its test images (its features and test-time views),
    differentiable with respect to the images."""

    def __init__(self, encoder: torch.nn.Module, features: str, views: TestViews, input_format: dict[str, Any]):
        self.encoder, self.features, self.views, self.input = encoder, features, views, input_format
        encoder.requires_grad_(False)

    @classmethod
    def of(cls, fitted: FittedRun, stage: str, device: torch.device) -> Network:
        """The network of evaluation ``stage`` (one with an encoder) of a finished run."""
        outputs = fitted.outputs[stage]
        encoder, state = load_encoder(fitted.run_dir / outputs["encoder"], get_registry(), device)
        return cls(encoder, outputs.get("features", "backbone"), TestViews(**outputs.get("tta", {})), state)

    def dim(self, device: torch.device) -> int:
        """The embeddings' width."""
        size = self.input.get("image_size", 64)
        height, width = (size, size) if isinstance(size, int) else size
        with torch.no_grad():
            blank = torch.zeros(1, int(self.input["in_channels"]), height, width, device=device)
            return self.encoder(blank, self.features).shape[1]

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, D) embeddings of float images (B, C, H, W) as the stage embedded its test images."""
        return self.views.average(self.encoder(self.views.apply(images), self.features).float())


class Explainer:
    """A run's network and one fitted pair verifier, differentiable end to end: the "same writer" score of two
    images through the stage's features and test-time views, and its integrated gradients."""

    def __init__(self, network: Network, head: torch.nn.Module):
        self.network, self.head = network, head.requires_grad_(False)
        self.input = network.input

    @classmethod
    def of(cls, fitted: FittedRun, stage: str, verifier: str, device: torch.device) -> Explainer:
        """``verifier`` of evaluation ``stage`` (one with an encoder) of a finished run."""
        network = Network.of(fitted, stage, device)
        head = fitted_verifier(fitted.entry(stage, verifier), network.dim(device), get_registry())
        return cls(network, head.to(device))

    def score(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """B scores of "same writer" for embeddings (B, D) and (B or 1, D)."""
        return same_writer_score(self.head(first, second.expand_as(first)))

    def attribute(self, images: torch.Tensor, steps: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients of each of two images (2, C, H, W), the other held fixed, from a blank page:
        (2, C, H, W) attributions and (2, 2) scores, row k ``[score with image k blank, score(a, b)]``."""
        with torch.no_grad():
            fixed = self.network.embed(images)
        parts = [self.attribute_side(images[k], fixed[1 - k:2 - k], first=k == 0, steps=steps) for k in range(2)]
        return torch.stack([a for a, _ in parts]), torch.stack([e for _, e in parts])

    def attribute_side(self, image: torch.Tensor, other: torch.Tensor, first: bool = True, steps: int = 64
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients of one image (C, H, W) against the other's fixed embedding (1, D), the image
        first or second in the pair: :func:`integrated_gradients`' attributions and path ends."""
        def score(batch: torch.Tensor) -> torch.Tensor:
            e = self.network.embed(batch)
            return self.score(e, other) if first else self.score(other.expand_as(e), e)

        return integrated_gradients(score, image, torch.zeros_like(image), steps=steps)


class SetExplainer:
    """k known against k questioned images scored as a stage's ``set_verification`` scores a trial, differentiable:
    each image's embedding mapped into the stage's ``space`` (a fitted verifier's, or as it is), centred and
    scaled to unit length, u_i; the score is ``cos(Σ_known u, Σ_questioned u)`` (``aggregate: direction``),
    ``(Σ_known u)·(Σ_questioned u) / k²`` (``mean``) or the largest cross cosine (``max``; its gradient
    follows that one pair). Each image gets integrated gradients from a blank page with the other 2k − 1
    held fixed, so its attributions add up to what its strokes add to the set's score."""

    def __init__(self, network: Network, space: torch.nn.Module | None, centre: np.ndarray, aggregate: str):
        self.network, self.space, self.aggregate = network, space, aggregate
        self.centre = torch.as_tensor(centre, dtype=torch.float64)
        self.input = network.input

    def score(self, embeddings: torch.Tensor) -> torch.Tensor:
        """B scores, float64, of B trials (B, 2k, D): the k known images first."""
        e = embeddings if self.space is None else self.space.embed(embeddings.flatten(0, 1))
        e = e.view(*embeddings.shape[:2], -1).double()
        units = torch.nn.functional.normalize(e - self.centre.to(e.device), dim=-1)
        k = units.shape[1] // 2
        known, questioned = units[:, :k], units[:, k:]
        if self.aggregate == "max":
            return (known @ questioned.transpose(1, 2)).flatten(1).max(dim=1).values
        a, b = known.sum(dim=1), questioned.sum(dim=1)
        if self.aggregate == "direction":
            return torch.nn.functional.cosine_similarity(a, b, dim=1)
        return (a * b).sum(dim=1) / k ** 2

    def attribute(self, images: torch.Tensor, steps: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """Integrated gradients of each of the 2k images (2k, C, H, W), the others held fixed, from a blank page:
        (2k, C, H, W) attributions and (2k, 2) scores, row i ``[score with image i blank, the set's score]``."""
        with torch.no_grad():
            fixed = self.network.embed(images)
        parts = []
        for i, image in enumerate(images):
            def score(batch: torch.Tensor, i: int = i) -> torch.Tensor:
                e = self.network.embed(batch)[:, None]
                others = fixed[None].expand(len(e), -1, -1)
                return self.score(torch.cat([others[:, :i], e, others[:, i + 1:]], dim=1))

            parts.append(integrated_gradients(score, image, torch.zeros_like(image), steps=steps))
        return torch.stack([a for a, _ in parts]), torch.stack([e for _, e in parts])


class FusedExplainer:
    """A score fusion ``s = Σ_m w_m s_m + b`` of explainable verifiers. Integrated gradients are linear in the
    score (the same path for every member), so its attributions are ``Σ_m w_m IG_m`` and the completeness
    check still holds: they add up to ``s(a, b) − s(blank, b)``."""

    def __init__(self, members: list[tuple[float, Explainer | FusedExplainer]], offset: float):
        keys = ("in_channels", "image_size", "keep_aspect")
        formats = {tuple(repr(e.input.get(k)) for k in keys) for _, e in members}
        if len(formats) > 1:
            raise HvkitError("the fusion's members read images of different formats (channels or size); explain "
                             "its members one at a time")
        self.members, self.offset = members, offset
        self.input = members[0][1].input

    def attribute(self, images: torch.Tensor, steps: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
        """As :meth:`Explainer.attribute`: the weighted sums of the members' attributions and path ends, in
        float64 (fitted weights can be large and the members' terms cancel)."""
        parts = [(w, e.attribute(images, steps)) for w, e in self.members]
        return (sum(w * a.double() for w, (a, _) in parts),
                sum(w * ends.double() for w, (_, ends) in parts) + self.offset)


def thirds(share: np.ndarray, image: np.ndarray) -> list[float]:
    """The attributions (H, W) summed over the left, middle and right third of the columns that hold ink in
    ``image`` (of a word such as "and", roughly its letters); all three sum to the whole map."""
    columns = np.flatnonzero(image.sum(axis=0) > 0)
    if len(columns) == 0:
        return [0.0, float(share.sum()), 0.0]
    cuts = np.linspace(columns[0], columns[-1] + 1, 4).round().astype(int)
    cuts[0], cuts[-1] = 0, share.shape[1]
    return [float(share[:, cuts[k]:cuts[k + 1]].sum()) for k in range(3)]


def shares_text(share: np.ndarray, image: np.ndarray) -> str:
    """The printed check of one image's map: its sum and :func:`thirds`."""
    return (f"attributions sum to {share.sum():+.4f}; left / middle / right third of the ink "
            + " / ".join(f"{part:+.4f}" for part in thirds(share, image)))


def plot_explanation(images: np.ndarray, shares: list[np.ndarray], names: Sequence[str], title: str,
                     path: Path) -> None:
    """Each image (ink bright, shown dark on white) beside its attribution map on a shared red–blue scale."""
    height = 0.7 + 1.9 * len(images)
    figure = new_figure(5.6, height)
    figure.subplots_adjust(left=0.02, right=0.86, bottom=0.1 / height, top=1 - 0.55 / height, hspace=0.3)
    axes = figure.subplots(len(images), 2, squeeze=False)
    bound = max(float(np.abs(s).max()) for s in shares) or 1.0
    for row, (image, share, name) in enumerate(zip(images, shares, names)):
        axes[row, 0].imshow(image, cmap="gray_r")
        axes[row, 0].set_title(name, fontsize=9)
        axes[row, 1].imshow(image, cmap="gray_r", alpha=0.35)
        shown = axes[row, 1].imshow(share, cmap="bwr", vmin=-bound, vmax=bound, alpha=0.85)
        axes[row, 1].set_title(f"attribution, sum {share.sum():+.3f}", fontsize=9)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    figure.colorbar(shown, ax=axes[:, 1].tolist(), shrink=0.8, label="→ same writer")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, format="png", dpi=100)
