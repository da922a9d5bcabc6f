"""Evaluation: the data an evaluation is given, the shared results evaluators need, and the runner.

Evaluators are plugins (kind ``evaluator``); :func:`evaluate` runs a list of them on one
:class:`EvalData`, computing each shared requirement (``"knn"``, ``"clusters"``,
``"all_pairs"``) once, and returns JSON-ready metrics. :mod:`.calibration` turns one
verifier's scores, or several verifiers' fused, into likelihood ratios and scores them by Cllr.
"""

from .calibration import (Calibration, LinearFusion, cllr, cosine_fusion_space, fit_calibration, fit_fusion,
                          mean_fusion, min_cllr)
from .data import EvalData, PairSet
from .roc import RocCounts
from .runner import evaluate, to_json
from .shared import REQUIREMENTS, Neighbours

__all__ = ["Calibration", "EvalData", "LinearFusion", "Neighbours", "PairSet", "REQUIREMENTS", "RocCounts", "cllr",
           "cosine_fusion_space", "evaluate", "fit_calibration", "fit_fusion", "mean_fusion", "min_cllr", "to_json"]
