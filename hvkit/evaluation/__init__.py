"""Evaluation: the data an evaluation is given, the shared results evaluators need, and the runner.

Evaluators are plugins (kind ``evaluator``); :func:`evaluate` runs a list of them on one
:class:`EvalData`, computing each shared requirement (``"knn"``, ``"clusters"``,
``"all_pairs"``) once, and returns JSON-ready metrics.
"""

from .data import EvalData, PairSet
from .roc import RocCounts
from .runner import evaluate, to_json
from .shared import REQUIREMENTS, Neighbours

__all__ = ["EvalData", "Neighbours", "PairSet", "REQUIREMENTS", "RocCounts", "evaluate", "to_json"]
