"""Writer verification and retrieval on held-out writers, with pluggable verifiers."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np
import torch

from hvkit import distributed
from hvkit.api import Component, Split, StageOutput
from hvkit.engine import StageContext, save_checkpoint
from hvkit.engine.checkpoint import atomic_write
from hvkit.engine.context import build
from hvkit.errors import RecipeError
from hvkit.evaluation import EvalData, PairSet, evaluate
from hvkit.registry import Registry
from hvkit_plugins.datasets.pairs import labelled_writers, sslhv_pairs
from hvkit_plugins.stages.encoder import embed, input_format, load_stage_encoder
from hvkit_plugins.stages.handcrafted import HANDCRAFTED, feature_options
from hvkit_plugins.stages.pair_files import PairIndex, pair_index
from hvkit_plugins.stages.pair_training import PairTraining, pair_probability, train_pair_head
from hvkit_plugins.stages.test_views import TestViews


class Evaluate:
    """Verification (every verifier) and retrieval on test writers, from a frozen encoder.

    ``features``: the encoder's backbone output (default) or its head's, or, without a model, the
    hand-crafted baselines of the study, raw ``pixels`` or ``hog``, CEDAR's ``gsc`` (gradient,
    structural and concavity features per cell), or the writer-identification features ``lbp``
    (uniform local binary patterns per cell) and ``hinge`` (the contour-hinge distribution)
    (:mod:`~hvkit_plugins.stages.handcrafted`). ``feature_options`` set a hand-crafted
    feature's own parameters, e.g. ``{leg: 6}`` for ``hinge`` or ``{grid: 2}`` for ``lbp``.

    Pairs follow SSL-HV: all same-writer combinations, each with one different-writer
    partner, so pairs are balanced. Trainable verifiers (the SSL-HV head: e1−e2 → MLP)
    learn on pairs of the first ``label_fraction`` of sorted training writers; verifiers with
    ``fit`` get those writers' embeddings and labels and the embeddings of every training
    image (labels unused: the cosine verifiers centre on their mean). A set verifier (``score_pairs``,
    e.g. ``rerank_pair``) scores each split's pairs among that split's embeddings. With
    ``negatives: same_group`` draws each different-writer partner from the anchor's writer's group
    (``Split.groups``, e.g. an Omniglot drawer's alphabet), so that no pair is told apart by the
    group alone; the writers alone in their group then give no pairs. ``positives: other_document``
    keeps only the same-writer pairs of two documents (``Split.documents``, e.g. two copies of the
    CEDAR letter) — in every split, for training, threshold and test — since words of one sitting
    share pen, paper and scan. ``protocol: clean`` (default)
    early stopping and thresholds use the writer-disjoint
    validation split; ``protocol: sslhv`` reproduces the study, which stopped on its test
    pairs — never use it to report a result you want to trust.

    The evaluators that score embeddings themselves (retrieval, the all-pairs ROC, the k-NN and
    linear probes of writer identification, the embedding map) see the raw embeddings, or with
    ``space`` naming one of the cosine verifiers (e.g. ``cosine_pair``, ``wccn_pair``) the
    embeddings as that verifier scores them, ``W(e − μ)``: the all-pairs AUC is then that
    verifier's over every test pair.

    ``tta`` embeds every image (training, validation and test alike, so the verifiers fit the
    space they score in) as the mean over the image and fixed shifted and zoomed copies
    (:class:`~hvkit_plugins.stages.test_views.TestViews`, e.g. ``{shifts: 2, zooms: [0.9, 1.1]}``:
    7 passes per image); ``hvkit verify`` then embeds its two images the same way.

    Each verifier's scores of the test and the val pairs are saved (``test_pair_scores.npz``,
    ``val_pair_scores.npz``) for ``hvkit compare`` and the ``score_fusion`` stage.

    Under several processes each rank embeds a share of the images; the embeddings are
    gathered once and rank 0 alone trains the verifiers, scores and writes.
    """

    def __init__(self, model_from: StageOutput | None = None,
                 features: Literal["backbone", "head", "pixels", "hog", "lbp", "hinge", "gsc"] = "backbone",
                 feature_options: dict[str, int | float | bool] = {},
                 verifiers: list[Component["head"]] = ["sslhv_pair", "cosine_pair"],
                 space: str | None = None,
                 evaluators: list[Component["evaluator"]] = ["verification", "retrieval", "knn_probe", "linear_probe",
                                                              "embedding_map"],
                 label_fraction: float = 0.1,
                 protocol: Literal["clean", "sslhv"] = "clean",
                 negatives: Literal["any", "same_group"] = "any",
                 positives: Literal["any", "other_document"] = "any",
                 pair_training: PairTraining = PairTraining(),
                 tta: TestViews = TestViews(),
                 plots: bool = True):
        problem = _features_problem(model_from is not None, features, tta, feature_options)
        if problem:
            raise ValueError(problem[1])
        self.model_from, self.features, self.verifiers, self.space = model_from, features, verifiers, space
        self.feature_options = dict(feature_options)
        self.evaluators, self.label_fraction, self.protocol = evaluators, label_fraction, protocol
        self.negatives, self.positives = negatives, positives
        self.pair_training, self.tta, self.plots = pair_training, tta, plots

    @staticmethod
    def pair_score_names(spec: dict[str, Any]) -> list[str]:
        """The verifiers whose pair scores a stage of resolved ``spec`` saves (what ``score_fusion`` may fuse)."""
        return _verifier_names(spec["verifiers"])

    @staticmethod
    def check_recipe(spec: dict[str, Any], earlier: dict[str, tuple[Callable, dict[str, Any]]]) -> None:
        """Hand-crafted features need no model and take no test-time views, and ``feature_options`` must be
        their parameters (checked by ``hvkit validate``)."""
        problem = _features_problem(spec["model_from"] is not None, spec["features"], TestViews(**spec["tta"]),
                                    spec["feature_options"])
        if problem:
            raise RecipeError(problem[1], path=problem[0])

    def _embed(self, ctx: StageContext, split: Split) -> torch.Tensor:
        """Embeddings of a split: each rank embeds its share, gathered once in split order."""
        if self.features in HANDCRAFTED:
            return HANDCRAFTED[self.features](split.images, **self.feature_options)
        share = split.images[distributed.shard(len(split))]
        return distributed.gather_shards(embed(self.encoder, share, ctx.device, self.features, views=self.tta))

    def run(self, ctx: StageContext) -> dict[str, Any]:
        data = ctx.dataset
        if "val" not in data.splits and self.protocol == "clean":
            raise ValueError("the clean protocol needs a 'val' split of writers")
        if self.positives == "other_document" and not data.splits["test"].documents:
            raise ValueError(f"positives: other_document needs each image's document, and the data ({data.name}) "
                             "names none (image_folder takes them from a pattern's named group 'document')")
        if self.negatives == "same_group" and not data.splits["test"].groups:
            raise ValueError(f"negatives: same_group needs writer groups, and the data ({data.name}) names none "
                             "(image_folder takes them from a pattern's named group 'group')")
        if self.model_from is not None:
            self.encoder, _ = load_stage_encoder(ctx, self.model_from)
        names = _verifier_names(self.verifiers)
        if self.space is not None and self.space not in names:
            raise ValueError(f"space: {self.space!r} is not one of this stage's verifiers {names}")
        train = data.splits["train"]
        parts = {"train": labelled_writers(train, self.label_fraction), "test": data.splits["test"]}
        if "val" in data.splits:
            parts["val"] = data.splits["val"]
        emb = {k: self._embed(ctx, s) for k, s in parts.items() if k != "train"}
        heads = [ctx.build("head", spec, in_dim=emb["test"].shape[1]) for spec in self.verifiers]
        if self.space is not None and not hasattr(heads[names.index(self.space)], "embed"):
            raise ValueError(f"space: verifier {self.space!r} scores pairs without an embedding space of its "
                             "own; name a cosine verifier (cosine_pair, wccn_pair, pcaw_pair)")
        unlabelled = None
        if any(hasattr(head, "fit") for head in heads):
            unlabelled = self._embed(ctx, train)  # every training image once; the labelled rows are a subset
            emb["train"] = unlabelled[torch.from_numpy(np.isin(train.labels, parts["train"].labels))]
        else:
            emb["train"] = self._embed(ctx, parts["train"])
        if not ctx.is_main:
            return {"scored_on_rank": 0}
        documents = {k: s.image_documents() for k, s in parts.items()}
        pairs = {k: sslhv_pairs(s.labels, seed=ctx.data_seed,
                                groups=s.image_groups() if self.negatives == "same_group" else None,
                                documents=documents[k] if self.positives == "other_document" else None)
                 for k, s in parts.items()}
        stop = "val" if self.protocol == "clean" else "test"
        verifiers: dict[str, dict[str, PairSet]] = {}
        fitted: dict[str, tuple[dict, torch.nn.Module]] = {}
        training: dict[str, Any] = {}
        for name, spec, head in zip(names, self.verifiers, heads):
            if hasattr(head, "fit"):
                head.fit(emb["train"], torch.as_tensor(np.asarray(parts["train"].labels)), unlabelled)
            if any(p.requires_grad for p in head.parameters()):
                training[name] = train_pair_head(head, emb["train"], pairs["train"], emb[stop], pairs[stop],
                                                 self.pair_training, ctx.generator("pairs", name, device="cpu"))
            verifiers[name] = {k: _pair_set(head, emb[k], pairs[k], parts[k].labels, documents[k])
                               for k in parts if k != "train"}
            fitted[name] = (spec, head)
        seen = _in_space(self.space, fitted, emb)
        eval_data = EvalData(
            embeddings=seen["test"].numpy(), labels=np.asarray(parts["test"].labels),
            val_embeddings=seen["val"].numpy() if "val" in seen else None,
            val_labels=np.asarray(parts["val"].labels) if "val" in parts else None,
            verifiers=verifiers, out_dir=ctx.stage_dir if self.plots else None,
            device=str(ctx.device), documents=documents["test"], val_documents=documents.get("val"))
        evaluators = [ctx.build("evaluator", spec) for spec in self.evaluators]
        metrics = evaluate(evaluators, eval_data)
        metrics["protocol"] = self.protocol
        metrics["negatives"] = self.negatives
        metrics["positives"] = self.positives
        metrics["space"] = self.space or "raw"
        metrics["tta"] = asdict(self.tta)
        metrics["pairs"] = {k: int(len(p[0])) for k, p in pairs.items()}
        if training:
            metrics["verifier_training"] = training
        verifiers_path = ctx.stage_dir / "verifiers.pt"
        np.save(ctx.stage_dir / "test_embeddings.npy", emb["test"].numpy())
        np.save(ctx.stage_dir / "test_labels.npy", eval_data.labels)
        found = {name: metrics.get("verification", {}).get(name, {}) for name in verifiers}
        thresholds = {name: values.get("threshold") for name, values in found.items()}
        saved = {part: ctx.stage_dir / PAIR_SCORE_FILES[part] for part in ("test", "val") if part in parts}
        for part, path in saved.items():
            rows = pairs[part][:2]
            save_pair_scores(path, {name: sets[part] for name, sets in verifiers.items()}, thresholds,
                             pairs_digest(parts[part], *rows), pair_index(data, parts[part], *rows))
        save_checkpoint(verifiers_path, {name: {"spec": spec, "state": head.state_dict(), "threshold": thresholds[name],
                                                "calibration": found[name].get("calibration")}
                                         for name, (spec, head) in fitted.items()})
        return {"metrics": metrics, "embeddings": ctx.relative(ctx.stage_dir / "test_embeddings.npy"),
                "verifiers": ctx.relative(verifiers_path), "pair_scores": ctx.relative(saved["test"]),
                "val_pair_scores": ctx.relative(saved["val"]) if "val" in saved else None,
                "features": self.features, "feature_options": self.feature_options, "tta": asdict(self.tta),
                "input": input_format(data),
                "encoder": ctx.outputs[self.model_from]["encoder"] if self.model_from else None,
                "report": verification_report(metrics, self.protocol)}


def _features_problem(has_model: bool, features: str, tta: TestViews,
                      options: dict[str, int | float | bool]) -> tuple[str, str] | None:
    """The key and message of what is wrong with a stage's choice of features, if anything."""
    if features not in HANDCRAFTED and not has_model:
        return "model_from", f"model_from must name an earlier stage unless features is one of {sorted(HANDCRAFTED)}"
    if features in HANDCRAFTED and tta.count > 1:
        return "tta", f"tta averages a network's embeddings; hand-crafted features (features: {features}) take none"
    allowed = feature_options(features) if features in HANDCRAFTED else []
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        return "feature_options", (f"features: {features} takes " + (", ".join(allowed) if allowed else "no options")
                                   + f", not {', '.join(unknown)}")
    if options:  # their values too, on one blank word, before any stage runs
        try:
            HANDCRAFTED[features](torch.zeros(1, 1, OPTIONS_CHECK_SIZE, OPTIONS_CHECK_SIZE), **options)
        except (ValueError, TypeError) as exc:
            return "feature_options", f"features: {features}: {exc}"
    return None


OPTIONS_CHECK_SIZE = 128
"""Side of the blank image on which ``hvkit validate`` tries a hand-crafted feature's options."""

PAIR_SCORES = "test_pair_scores.npz"
PAIR_SCORE_FILES = {"test": PAIR_SCORES, "val": "val_pair_scores.npz"}
"""Each split's pair-score file in an evaluation stage's directory (outputs ``pair_scores``, ``val_pair_scores``)."""


def pairs_digest(split: Split, first: np.ndarray, second: np.ndarray) -> str:
    """SHA-256 of a split's images and of which two make each pair: equal exactly when both are the same."""
    digest = hashlib.sha256(split.images.numpy().tobytes())
    for index in (first, second):
        digest.update(np.ascontiguousarray(index, dtype=np.int64).tobytes())
    return digest.hexdigest()


def save_pair_scores(path: Path, sets: dict[str, PairSet], thresholds: dict[str, float | None],
                     digest: str, index: PairIndex | None = None) -> None:
    """Every verifier's scores on one split's pairs, with its val threshold.

    The test pairs' (``test_pair_scores.npz``) serve for comparing models afterwards (``hvkit
    compare``), the val pairs' (``val_pair_scores.npz``) for fitting a score fusion on them
    (``score_fusion``). ``digest`` (:func:`pairs_digest`) identifies the pairs, so scores of other
    pairs are never compared or fused; ``index`` says which two images make each (``hvkit errors``).
    """
    first = next(iter(sets.values()), PairSet(np.empty(0), np.empty(0, bool), np.empty(0, np.int64)))
    arrays = {"same": first.same, "writers": first.writers, "pairs_digest": np.array(digest),
              **(index.arrays() if index is not None else {})}
    if first.same_document is not None:
        arrays["same_document"] = first.same_document
    for name, pairs in sets.items():
        arrays[f"score:{name}"] = pairs.scores
        arrays[f"threshold:{name}"] = np.array(np.nan if thresholds.get(name) is None else thresholds[name])
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_pair_scores(path: Path) -> dict[str, tuple[PairSet, float | None]]:
    """``{verifier: (pairs, val threshold or None)}`` as written by :func:`save_pair_scores`."""
    with np.load(path) as data:
        same, writers = data["same"], data["writers"]
        same_document = data["same_document"] if "same_document" in data.files else None
        out = {}
        for key in data.files:
            if key.startswith("score:"):
                name = key.removeprefix("score:")
                threshold = float(data[f"threshold:{name}"])
                out[name] = (PairSet(data[key], same, writers, same_document),
                             None if np.isnan(threshold) else threshold)
    return out


def fitted_verifier(entry: dict[str, Any], in_dim: int, registry: Registry) -> torch.nn.Module:
    """The verifier head an evaluation saved in ``verifiers.pt`` (``entry``: its ``spec``, ``state``), in eval mode."""
    head = build(registry, "head", entry["spec"], in_dim=in_dim)
    head.load_state_dict(entry["state"])
    return head.eval()


def load_pairs_digest(path: Path) -> str | None:
    """The saved pairs' :func:`pairs_digest`, or None for files written before hvkit saved it."""
    with np.load(path) as data:
        return str(data["pairs_digest"]) if "pairs_digest" in data.files else None


def _verifier_names(specs: list[dict]) -> list[str]:
    """Each verifier's key in the metrics: its plugin name, suffixed by its position when repeated."""
    names: list[str] = []
    for n, spec in enumerate(specs):
        names.append(spec["name"] if spec["name"] not in names else f"{spec['name']}_{n}")
    return names


def _in_space(space: str | None, fitted: dict[str, tuple[dict, torch.nn.Module]],
              emb: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The test and val embeddings as verifier ``space`` scores them (its ``embed``), or as they are."""
    if space is None:
        return emb
    return {k: space_embedding(fitted[space][1], e) for k, e in emb.items() if k != "train"}


def space_embedding(head: torch.nn.Module, emb: torch.Tensor) -> torch.Tensor:
    """Embeddings mapped into a fitted verifier's space (its ``embed``), float32 on the CPU."""
    device = next(iter(head.buffers()), torch.empty(0)).device
    with torch.no_grad():
        return head.embed(emb.to(device)).float().cpu()


def _pair_set(head: torch.nn.Module, emb: torch.Tensor, pairs: tuple[np.ndarray, np.ndarray, np.ndarray],
              labels: np.ndarray, documents: np.ndarray | None) -> PairSet:
    i, j, same = pairs
    return PairSet(scores=pair_probability(head, emb, i, j), same=np.asarray(same, dtype=bool),
                   writers=np.asarray(labels)[i],
                   same_document=None if documents is None else documents[i] == documents[j])


def verification_report(metrics: dict[str, Any], protocol: str) -> str:
    """``report.md``'s section: a row per verifier of ``metrics["verification"]``, then retrieval, probe and TTA
    notes."""
    rows = ["| verifier | accuracy (val threshold) | ROC AUC | EER | Cllr | min Cllr |", "|---|---|---|---|---|---|"]
    level = None
    space = metrics.get("space", "raw")
    seen = "" if space == "raw" else f" in the {space} space"
    for name, values in metrics.get("verification", {}).items():
        if isinstance(values, dict) and "roc_auc" in values:
            ci = values.get("ci", {})
            level = ci.get("confidence", level)
            cells = [_with_interval(values.get(key), ci.get(key))
                     for key in ("accuracy", "roc_auc", "eer", "cllr", "min_cllr")]
            rows.append(f"| {name}{seen if name == 'all_pairs' else ''} | " + " | ".join(cells) + " |")
    if level is not None:
        rows.append(f"\n({level:.0%} intervals from resampling test writers.)")
    if any(isinstance(v, dict) and "cllr" in v for v in metrics.get("verification", {}).values()):
        rows.append("\nCllr: cost in bits of the likelihood ratios calibrated on validation writers (1: no "
                    "information, 0: perfect); min Cllr: after the best monotone recalibration on test.")
    split = {name: values for name, values in metrics.get("verification", {}).items()
             if isinstance(values, dict) and "roc_auc_same_document" in values}
    if split:
        within = next(iter(split.values()))["same_document_pairs"]
        rows.append(f"\nROC AUC with the {within} same-writer pairs of one document, and with the others, each "
                    "against every different-writer pair: " + ", ".join(
                        f"{name} {v['roc_auc_same_document']:.4f} / {v['roc_auc_other_document']:.4f}"
                        for name, v in split.items()) + ".")
    found = metrics.get("retrieval", {})
    if "precision_at_1" in found:
        ranked = ", k-reciprocal re-ranked" if "rerank" in found else ""
        more = [f"hard top-{key.rsplit('_', 1)[1]} {value:.4f}" for key, value in found.items()
                if key.startswith("hard_at_")] + ([f"mAP {found['map']:.4f}"] if "map" in found else [])
        rows.append(f"\nRetrieval among the test writers{seen}{ranked}: precision@1 {found['precision_at_1']:.4f}, "
                    f"MAP@R {found['map_at_r']:.4f}" + "".join(f", {m}" for m in more) + ".")
    probes = [f"{label} {metrics[key]['accuracy']:.4f}" for key, label in
              (("knn_probe", "k-NN vote (leave one out)"), ("linear_probe", "linear probe"))
              if isinstance(metrics.get(key), dict) and "accuracy" in metrics[key]]
    if probes:
        rows.append(f"\nWriter identification among the test writers{seen}: {', '.join(probes)}.")
    found = metrics.get("open_set", {})
    if "rank1" in found:
        ci = found.get("ci", {})
        shown = {key: _with_interval(value, ci.get(key)) for key, value in found.items()}
        rates = ", ".join(f"{shown[key]} at a false alarm rate of {key.rsplit('_', 1)[1]}"
                          for key in found if key.startswith("dir_at_far_"))
        rows.append(f"\nOpen-set identification{seen}: {found['enrolled_writers']} test writers enrolled "
                    f"({found['gallery_images']} images), {found['unknown_writers']} unknown; rank 1 "
                    f"{shown['rank1']}, detection and identification rate {rates}; detection AUC "
                    f"{shown['detection_auc']}.")
    rows += _set_table(metrics.get("set_verification"), seen)
    if metrics.get("negatives") == "same_group":
        rows.append("\nEach different-writer partner is drawn from the anchor's writer's group.")
    if metrics.get("positives") == "other_document":
        rows.append("\nEach same-writer pair joins images of two documents.")
    tta = TestViews(**metrics.get("tta", {}))
    if tta.count > 1:
        rows.append(f"\nEach embedding is the mean over {tta.count} views of its image (test-time augmentation: "
                    f"shifts of {tta.shifts} px, zooms {tta.zooms}).")
    note = "" if protocol == "clean" else "\n\n*SSL-HV protocol: early stopping on test pairs.*"
    return "\n".join(rows) + note


def _set_table(found: dict[str, Any] | None, seen: str) -> list[str]:
    """``report.md``'s rows for ``set_verification``: a row per number of images a side."""
    if not isinstance(found, dict):
        return []
    across = ", the two sides from different documents" if found.get("cross_document") else ""
    rows = [f"\nk known against k questioned images of the test writers{seen}{across}:\n",
            "| k | trials | writers | accuracy (val threshold) | ROC AUC | EER | Cllr | min Cllr |",
            "|---|---|---|---|---|---|---|---|"]
    for key, values in found.items():
        if key[:1] == "k" and isinstance(values, dict):
            ci = values.get("ci", {})
            cells = [_with_interval(values.get(name), ci.get(name))
                     for name in ("accuracy", "roc_auc", "eer", "cllr", "min_cllr")]
            rows.append(f"| {key[1:]} | {values['trials']} | {values['writers']} | " + " | ".join(cells) + " |")
    return rows


def _with_interval(value: Any, interval: list[float] | None) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    return f"{value:.4f}" + (f" ({interval[0]:.3f}–{interval[1]:.3f})" if interval else "")
