"""A finished run's scorers as the commands use them: evaluation stages' fitted verifiers and score fusions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hvkit.engine import load_checkpoint
from hvkit.errors import HvkitError
from hvkit.registry import get_registry
from hvkit_plugins.commands.sources import stage_outputs
from hvkit_plugins.stages.score_fusion import FUSED


class FittedRun:
    """The evaluation stages (fitted verifiers, thresholds, calibrations) and score fusions of run ``run_dir``.

    A fusion scores a pair by ``Σ_m w_m s_m + b`` over its members ``stage/verifier`` (each a
    verifier of an evaluation stage or another fusion's ``fused``), with the weights and offset it
    fitted on the validation writers.
    """

    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        self.outputs = stage_outputs(run_dir)
        self.evaluations = [n for n, o in self.outputs.items() if "verifiers" in o]
        self.fusions = [n for n, o in self.outputs.items() if "fusion" in o.get("metrics", {})]
        if not self.evaluations:
            raise HvkitError(f"{run_dir}: no completed evaluation stage")
        self._fitted: dict[str, dict[str, Any]] = {}

    def default_stage(self) -> str:
        """The last evaluation with an encoder, else the last evaluation."""
        return ([n for n in self.evaluations if self.outputs[n].get("encoder")] or self.evaluations)[-1]

    def check(self, stage: str, verifier: str | None) -> str:
        """The verifier to use in ``stage`` (``verifier``, or by default its ``cosine_pair``, else its first),
        or a one-line error."""
        if stage in self.fusions:
            if verifier not in (None, FUSED):
                raise HvkitError(f"stage {stage!r} fuses its members into one verifier, {FUSED!r}; "
                                 f"drop --verifier {verifier}")
            return FUSED
        if stage not in self.evaluations:
            fusions = f"; score fusions: {', '.join(self.fusions)}" if self.fusions else ""
            raise HvkitError(f"{self.run_dir}: no evaluation stage {stage!r}; have {', '.join(self.evaluations)}"
                             + fusions)
        if verifier is None:
            fitted = self._verifiers(stage)
            return "cosine_pair" if "cosine_pair" in fitted else next(iter(fitted))
        return verifier

    def members(self, stage: str) -> list[tuple[str, str, float]]:
        """A fusion's members as ``(stage, verifier, weight)``, each checked to have outputs."""
        fusion = self.outputs[stage]["metrics"]["fusion"]
        found = []
        for member in fusion["members"]:
            member_stage, _, member_verifier = member.partition("/")
            if member_stage not in self.outputs:
                raise HvkitError(f"{self.run_dir}: stage {stage!r} fuses {member!r}, whose stage has no outputs")
            found.append((member_stage, self.check(member_stage, member_verifier), float(fusion["weights"][member])))
        return found

    def leaves(self, stage: str, verifier: str) -> list[tuple[str, str]]:
        """The evaluation verifiers ``verifier`` of ``stage`` scores by: itself, or a fusion's members', nested
        fusions opened."""
        if stage not in self.fusions:
            return [(stage, verifier)]
        return [leaf for s, v, _ in self.members(stage) for leaf in self.leaves(s, v)]

    def without_gradient(self, stage: str, verifier: str) -> list[tuple[str, str]]:
        """The verifiers of :meth:`leaves` whose stage embeds with no encoder (hand-crafted features)."""
        return [(s, v) for s, v in self.leaves(stage, verifier) if not self.outputs[s].get("encoder")]

    def offset(self, stage: str) -> float:
        """A fusion's offset ``b``."""
        return float(self.outputs[stage]["metrics"]["fusion"]["offset"])

    def decision(self, stage: str, verifier: str) -> tuple[float, dict[str, float] | None]:
        """The threshold chosen on the validation writers and the calibration fitted there (None if none)."""
        if stage in self.fusions:
            found = self.outputs[stage]["metrics"]["verification"][FUSED]
            return found["threshold"], found.get("calibration")
        entry = self.entry(stage, verifier)
        return entry["threshold"], entry.get("calibration")

    def entry(self, stage: str, verifier: str) -> dict[str, Any]:
        """What evaluation ``stage`` saved of ``verifier`` (``spec``, ``state``, ``threshold`` …); it must score a
        pair by itself."""
        fitted = self._verifiers(stage)
        if verifier not in fitted:
            raise HvkitError(f"stage {stage!r} has no verifier {verifier!r}; have {', '.join(fitted)}")
        if hasattr(self.head_class(fitted[verifier]), "score_pairs"):
            raise HvkitError(f"verifier {verifier!r} of stage {stage!r} scores a pair among the other images of its "
                             "set; two files alone are none: choose a verifier that scores a pair by itself "
                             f"({', '.join(n for n in fitted if n != verifier)})")
        return fitted[verifier]

    def _verifiers(self, stage: str) -> dict[str, dict[str, Any]]:
        """What evaluation ``stage`` saved of each verifier, by name, in the recipe's order."""
        if stage not in self._fitted:
            self._fitted[stage] = load_checkpoint(self.run_dir / self.outputs[stage]["verifiers"])
        return self._fitted[stage]

    @staticmethod
    def head_class(entry: dict[str, Any]) -> type:
        """The head plugin's class of a saved verifier."""
        return get_registry().get("head", entry["spec"]["name"]).factory
