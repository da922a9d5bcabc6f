"""Fuse earlier evaluations' verifier scores into one likelihood ratio (score-level fusion)."""

from __future__ import annotations

import difflib
from typing import Any, Callable, Literal, Mapping

import numpy as np
import torch

from hvkit.api import Component
from hvkit.engine import StageContext, load_checkpoint
from hvkit.errors import RecipeError
from hvkit.evaluation import (EvalData, LinearFusion, PairSet, cosine_fusion_space, evaluate, fit_fusion,
                              mean_fusion)
from hvkit_plugins.stages.evaluate import (PAIR_SCORE_FILES, fitted_verifier, load_pair_scores, load_pairs_digest,
                                           save_pair_scores, verification_report)
from hvkit_plugins.stages.pair_files import PairIndex, load_pair_index

FUSED = "fused"
"""The fused scores' verifier name in the metrics and the pair-score files."""


class ScoreFusion:
    """Score-level fusion: several verifiers' pair scores → one log LR, by logistic regression on the val pairs.

    ``members`` names two or more verifiers of earlier evaluation stages as ``STAGE/VERIFIER``
    (``[vicreg/wccn_pair, vicreg_finetuned/wccn_pair, supervised_10pct/cosine_pair]``); they must
    have scored the same val and the same test pairs (one run's evaluations do; the pair files'
    digests are compared). ``fit: logistic`` fits ``log LR = Σ_k w_k s_k + b`` on the val pairs by
    prior-weighted logistic regression with Platt's targets
    (:func:`~hvkit.evaluation.fit_fusion`; Pigeon et al. 2000, Brümmer et al. 2007, the FoCal
    toolkit): the fused score is a calibrated natural log LR. ``fit: mean`` is the label-free
    baseline, the mean of the members' z-scores by their val mean and deviation
    (:func:`~hvkit.evaluation.mean_fusion`), calibrated by the evaluator like any verifier.
    ``l2 > 0`` (logistic only) adds a ridge penalty ``½ l2 Σ_k (w_k σ_k)²`` on the weights per val
    standard deviation: members trained on the same writers score nearly collinearly, and the
    unpenalised fit may give them large weights of opposite sign that do not carry to the test
    pairs; the penalty makes them share (and lets exactly collinear members through).

    The fused val and test scores are the verifier ``fused`` of the ``verification`` evaluator
    (accuracy at the val threshold and at ``fixed_threshold``, here 0 — LR 1, the even-odds
    decision — AUC, EER, TAR@FAR, Cllr, min Cllr, writer-bootstrap intervals, plots). Its own
    calibration of a logistic fusion is the identity (slope 1, offset 0 to solver precision): the
    fusion already minimised that cost on those pairs. ``fusion`` in the metrics holds each
    member's weight on its raw scores (scale-dependent) and ``weights_per_sd``, the weight times
    the member's val standard deviation, which compares members; no ``standardize`` option, since
    the logistic fit is affine-equivariant and standardising would not change the fused LRs.

    ``evaluators`` (e.g. ``[retrieval, embedding_map]``) evaluate the test images in the fused
    space: when every member is a cosine verifier of an evaluate stage (``cosine_pair``,
    ``wccn_pair``, ``pcaw_pair``) and every weight is ≥ 0 (``fit: mean`` gives them), the rows
    ``[√w_1 v̂_1, …, √w_K v̂_K]`` of each member's ``W(e − μ)`` (normalised) have inner products
    equal to the fused score less the offset (:func:`~hvkit.evaluation.cosine_fusion_space`), so
    writer retrieval ranks by the fusion itself.

    The fused scores are saved as an evaluation's are (``test_pair_scores.npz``,
    ``val_pair_scores.npz``), so ``hvkit compare RUN STAGE/fused EVAL/wccn_pair`` works and a later
    fusion may take this one as a member. A trainable verifier early-stopped on the val pairs
    (``sslhv_pair`` under ``protocol: clean``) scores them a little better than unseen pairs, and
    the fusion may over-weight it.
    """

    def __init__(self, members: list[str], fit: Literal["logistic", "mean"] = "logistic",
                 verification: Component["evaluator"] = {"name": "verification", "fixed_threshold": 0.0,
                                                         "all_pairs": False},
                 plots: bool = True, l2: float = 0.0, evaluators: list[Component["evaluator"]] = []):
        _check_members(members)
        for member in members:
            _split(member)
        if fit not in ("logistic", "mean"):
            raise ValueError(f"fit={fit!r} must be 'logistic' or 'mean'")
        _check_l2(fit, l2)
        self.members, self.fit, self.verification, self.plots, self.l2 = list(members), fit, verification, plots, l2
        self.evaluators = list(evaluators)

    @staticmethod
    def pair_score_names(spec: dict[str, Any]) -> list[str]:
        """The one verifier whose pair scores this stage saves: ``fused``."""
        return [FUSED]

    @staticmethod
    def check_recipe(spec: dict[str, Any], earlier: dict[str, tuple[Callable, dict[str, Any]]]) -> None:
        """Each member must name a verifier whose pair scores an earlier stage saves (checked by ``hvkit validate``)."""
        members = spec["members"]
        try:
            _check_members(members)
        except ValueError as exc:
            raise RecipeError(str(exc), path="members") from None
        try:
            _check_l2(spec["fit"], spec["l2"])
        except ValueError as exc:
            raise RecipeError(str(exc), path="l2") from None
        for i, member in enumerate(members):
            where = f"members.{i}"
            try:
                stage, verifier = _split(member)
            except ValueError as exc:
                raise RecipeError(str(exc), path=where) from None
            if stage not in earlier:
                raise RecipeError(f"{member!r}: {stage!r} is not an earlier stage" + _nearest(stage, list(earlier)),
                                  path=where)
            factory, stage_spec = earlier[stage]
            names = getattr(factory, "pair_score_names", None)
            if names is None:
                raise RecipeError(f"{member!r}: stage {stage!r} ({stage_spec['stage']}) saves no pair scores; "
                                  "name an evaluate (or score_fusion) stage", path=where)
            names = names(stage_spec)
            if verifier not in names:
                raise RecipeError(f"{member!r}: stage {stage!r} has no verifier {verifier!r}; it has "
                                  f"{', '.join(names)}", path=where)

    def run(self, ctx: StageContext) -> dict[str, Any]:
        if not ctx.is_main:
            return {"scored_on_rank": 0}
        loaded = [_member_scores(ctx, member) for member in self.members]
        for part in ("val", "test"):
            _same_pairs(self.members, [found[part] for found in loaded], part)
        scores = {part: np.column_stack([found[part][0].scores for found in loaded]) for part in ("val", "test")}
        reference = {part: loaded[0][part][0] for part in ("val", "test")}
        try:
            if self.fit == "logistic":
                fusion = fit_fusion(scores["val"], reference["val"].same, l2=self.l2)
            else:
                fusion = mean_fusion(scores["val"])
        except ValueError as exc:  # the message names a column: say which member that is
            raise ValueError(f"members {', '.join(f'{k}: {m}' for k, m in enumerate(self.members))}: {exc}") from None
        fused = {part: PairSet(fusion.log_lr(scores[part]), pairs.same, pairs.writers, pairs.same_document)
                 for part, pairs in reference.items()}
        data = EvalData(embeddings=np.zeros((0, 1), np.float32), labels=np.zeros(0, np.int64),  # pair scores only
                        verifiers={FUSED: fused}, out_dir=ctx.stage_dir if self.plots else None)
        metrics = evaluate([ctx.build("evaluator", self.verification)], data)
        metrics["fusion"] = _weights(self.fit, self.members, fusion, scores["val"].std(0))
        if self.evaluators:
            space, labels = _fused_space(ctx, self.members, fusion)
            metrics |= evaluate([ctx.build("evaluator", spec) for spec in self.evaluators],
                                EvalData(embeddings=space, labels=labels, metric="ip", device=str(ctx.device),
                                         out_dir=ctx.stage_dir if self.plots else None))
            metrics["space"] = FUSED
        if self.l2:
            metrics["fusion"]["l2"] = self.l2
        metrics["pairs"] = {part: len(sets.scores) for part, sets in fused.items()}
        protocols = {ctx.outputs[_split(m)[0]].get("metrics", {}).get("protocol", "clean") for m in self.members}
        metrics["protocol"] = "sslhv" if "sslhv" in protocols else "clean"  # a member stopped on test taints it
        threshold = metrics.get("verification", {}).get(FUSED, {}).get("threshold")
        saved = {}
        for part, sets in fused.items():
            saved[part] = ctx.stage_dir / PAIR_SCORE_FILES[part]
            save_pair_scores(saved[part], {FUSED: sets}, {FUSED: threshold}, loaded[0][part][1], loaded[0][part][2])
        ctx.log(f"fused {len(self.members)} verifiers on {len(scores['val'])} val pairs: "
                + ", ".join(f"{m} {w:+.3g}/sd" for m, w in metrics["fusion"]["weights_per_sd"].items()))
        return {"metrics": metrics, "pair_scores": ctx.relative(saved["test"]),
                "val_pair_scores": ctx.relative(saved["val"]), "report": self._report(ctx, metrics)}

    def _report(self, ctx: StageContext, metrics: dict[str, Any]) -> str:
        """The members' rows (from their stages' metrics) above the fused one, then the fused log LR's formula."""
        rows: dict[str, Any] = {}
        for member in self.members:
            stage, verifier = _split(member)
            found = ctx.outputs[stage].get("metrics", {}).get("verification", {}).get(verifier)
            if isinstance(found, dict):
                rows[member] = found
        rows[FUSED] = metrics.get("verification", {}).get(FUSED, {})
        table = verification_report({"verification": rows, "retrieval": metrics.get("retrieval", {}),
                                     "space": metrics.get("space", "raw")}, metrics["protocol"])
        fit = metrics["fusion"]
        terms = " ".join(f"{w:+.4g} · {m}" for m, w in fit["weights"].items())
        pairs = metrics["pairs"]["val"]
        ridge = f" with ridge l2 {self.l2:g}" if self.l2 else ""
        what = (f"natural log LR, by logistic regression{ridge} on {pairs} val pairs" if self.fit == "logistic"
                else f"the mean of the members' z-scores on {pairs} val pairs; its LRs are the evaluator's calibration")
        per_sd = ", ".join(f"{m} {w:.3g}" for m, w in fit["weights_per_sd"].items())
        return f"{table}\n\nfused = {terms} {fit['offset']:+.4g} ({what}; weight per val standard deviation: {per_sd})."


def _split(member: str) -> tuple[str, str]:
    stage, _, verifier = member.partition("/") if isinstance(member, str) else ("", "", "")
    if not stage or not verifier:
        raise ValueError(f"member {member!r} must read STAGE/VERIFIER, e.g. evaluate/wccn_pair")
    return stage, verifier


def _check_members(members: list[str]) -> None:
    if len(members) < 2 or len(set(members)) != len(members):
        raise ValueError(f"members must name at least two different verifiers as STAGE/VERIFIER, got {members}")


def _check_l2(fit: str, l2: float) -> None:
    if not (np.isfinite(l2) and l2 >= 0):
        raise ValueError(f"l2={l2} must be a finite number >= 0")
    if l2 and fit != "logistic":
        raise ValueError(f"l2={l2} applies to fit: logistic, not fit: {fit}")


def _nearest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=3, cutoff=0.5)
    return "; did you mean " + ", ".join(repr(c) for c in close) + "?" if close else ""


def _member_scores(ctx: StageContext, member: str) -> dict[str, tuple[PairSet, str | None, PairIndex | None]]:
    """``{"val": (pairs, digest, index), "test": (pairs, digest, index)}`` of one member, from its stage's saved
    files (index: :func:`load_pair_index`'s)."""
    stage, verifier = _split(member)
    outputs = ctx.outputs.get(stage, {})
    found = {}
    for part, key in (("val", "val_pair_scores"), ("test", "pair_scores")):
        if not outputs.get(key):
            why = "name an evaluate stage"
            if outputs.get("pair_scores"):
                why = (f"it ran without val writers, or before hvkit saved val scores: re-run it with hvkit eval "
                       f"{ctx.run_dir} --stage {stage}")
            raise ValueError(f"member {member!r}: stage {stage!r} saved no {part} pair scores ({why})")
        path = ctx.run_dir / outputs[key]
        scores = load_pair_scores(path)
        if verifier not in scores:
            raise ValueError(f"member {member!r}: {path} has no verifier {verifier!r}; it holds {', '.join(scores)}")
        found[part] = (scores[verifier][0], load_pairs_digest(path), load_pair_index(path))
    return found


def leaf_verifiers(outputs: Mapping[str, dict[str, Any]], weights: Mapping[str, float],
                   owner: str) -> tuple[dict[tuple[str, str], float], float]:
    """Fusion ``owner``'s members ``weights`` ({STAGE/VERIFIER: w}) as evaluate stages' verifiers.

    A member that is itself a fusion (its stage's ``outputs`` hold ``metrics.fusion``) scores
    ``Σ_k v_k s_k + c``, so ``w`` times it adds ``w v_k`` to each of its leaves and ``w c`` to the
    offset; a verifier reached twice sums its weights. Returns ``({(stage, verifier): weight},
    offset)``; ValueError on a negative weight (no space of inner products) or a member stage
    without outputs.
    """
    leaves: dict[tuple[str, str], float] = {}
    offset = 0.0
    for member, weight in weights.items():
        stage, verifier = _split(member)
        if stage not in outputs:
            raise ValueError(f"stage {owner!r} fuses {member!r}, whose stage has no outputs")
        if weight < 0:
            raise ValueError(f"stage {owner!r} weighs {member} by {weight:.4g} < 0: a negative weight has no space "
                             "of inner products (fit: mean weighs every member > 0)")
        fusion = outputs[stage].get("metrics", {}).get("fusion")
        if fusion is None:
            leaves[stage, verifier] = leaves.get((stage, verifier), 0.0) + weight
            continue
        inner, inner_offset = leaf_verifiers(outputs, fusion["weights"], stage)
        offset += weight * (fusion["offset"] + inner_offset)
        for leaf, inner_weight in inner.items():
            leaves[leaf] = leaves.get(leaf, 0.0) + weight * inner_weight
    return leaves, offset


def _fused_space(ctx: StageContext, members: list[str], fusion: LinearFusion) -> tuple[np.ndarray, np.ndarray]:
    """The test images' rows in the fused space (:func:`cosine_fusion_space`, nested fusions flattened by
    :func:`leaf_verifiers`) and their writers."""
    try:
        leaves, _ = leaf_verifiers(ctx.outputs, dict(zip(members, map(float, fusion.weights))), ctx.name)
    except ValueError as exc:
        raise ValueError(f"evaluators: {exc}") from None
    blocks, labels, saved = [], None, {}
    for stage, verifier in leaves:
        outputs = ctx.outputs[stage]
        if not outputs.get("verifiers"):
            raise ValueError(f"evaluators: {stage}/{verifier} is not a verifier of an evaluate stage; the fused space "
                             "joins evaluate stages' cosine verifiers")
        if stage not in saved:  # a stage's verifiers, test embeddings and writers, read once for all its members
            embeddings = ctx.run_dir / outputs["embeddings"]
            saved[stage] = (load_checkpoint(ctx.run_dir / outputs["verifiers"]), torch.from_numpy(np.load(embeddings)),
                            np.load(embeddings.with_name("test_labels.npy")))
        fitted, emb, found = saved[stage]
        head = fitted_verifier(fitted[verifier], emb.shape[1], ctx.registry)
        if not hasattr(head, "embed"):
            raise ValueError(f"evaluators: {stage}/{verifier} scores pairs without an embedding space; the fused space "
                             "joins cosine verifiers (cosine_pair, wccn_pair, pcaw_pair, correlation_pair)")
        with torch.no_grad():
            blocks.append(head.embed(emb).numpy())
        if labels is not None and not np.array_equal(found, labels):
            raise ValueError(f"evaluators: {stage}/{verifier} embedded other test images than "
                             f"{'/'.join(next(iter(leaves)))}")
        labels = found
    return cosine_fusion_space(blocks, list(leaves.values())), labels


def _same_pairs(members: list[str], found: list[tuple[PairSet, str | None, PairIndex | None]], part: str) -> None:
    """Refuse members whose ``part`` pairs differ: by digest, and by the pairs' labels and writers."""
    (first, digest, _), name = found[0], members[0]
    for member, (pairs, other, _) in zip(members[1:], found[1:]):
        digests_differ = digest is not None and other is not None and digest != other
        same_labels = np.array_equal(pairs.same, first.same) and np.array_equal(pairs.writers, first.writers)
        if digests_differ or not same_labels:
            raise ValueError(f"members {name!r} and {member!r} scored different {part} pairs (another split, data.seed "
                             "or dataset); fuse evaluations of the same pairs")


def _weights(fit: str, members: list[str], fusion: LinearFusion, spread: np.ndarray) -> dict[str, Any]:
    return {"fit": fit, "members": list(members), "weights": dict(zip(members, map(float, fusion.weights))),
            "weights_per_sd": {m: float(w * s) for m, w, s in zip(members, fusion.weights, spread)},
            "offset": float(fusion.offset)}
