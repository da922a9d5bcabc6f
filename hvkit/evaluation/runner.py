"""Run evaluators on one :class:`EvalData`, computing every shared requirement once."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from hvkit.api import Evaluator

from . import shared
from .data import EvalData


def evaluate(evaluators: Sequence[Evaluator] | Mapping[str, Evaluator], data: EvalData) -> dict[str, Any]:
    """Metrics of every evaluator, keyed by its name: ``{name: {metric: value, ...}}``, JSON-ready.

    A sequence names each evaluator by its ``name`` attribute (else its class name); pass
    a mapping to name them yourself, e.g. two retrieval evaluators with different options.
    Each requirement in the union of the evaluators' ``requires`` is computed once, with
    the parameters all of them need (see :mod:`hvkit.evaluation.shared`); an evaluator is
    handed the ones it declared.
    """
    if isinstance(evaluators, Mapping):
        named = dict(evaluators)
    else:
        named = {}
        for ev in evaluators:
            name = getattr(ev, "name", type(ev).__name__)
            if name in named:
                raise ValueError(f"two evaluators are both named {name!r}: pass a mapping name -> evaluator")
            named[name] = ev
    needs: dict[str, list[Evaluator]] = {}
    for name, ev in named.items():
        for requirement in ev.requires:
            if requirement not in shared.REQUIREMENTS:
                raise ValueError(f"evaluator {name!r} requires {requirement!r}; known requirements: "
                                 f"{', '.join(sorted(shared.REQUIREMENTS))}")
            needs.setdefault(requirement, []).append(ev)
    results = {requirement: shared.REQUIREMENTS[requirement](data, users) for requirement, users in needs.items()}
    if data.out_dir is not None:
        data.out_dir.mkdir(parents=True, exist_ok=True)
    return {name: to_json(ev(data, {r: results[r] for r in ev.requires})) for name, ev in named.items()}


def to_json(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python floats, ints, bools and lists, paths into strings."""
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [to_json(v) for v in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, Path):
        return str(value)
    return value
