"""Hand-crafted features that need no training: the study's raw pixels and HOG, CEDAR's GSC, and two of
writer identification, uniform LBP and the contour hinge — the ``evaluate`` stage's ``features`` without a model."""

from __future__ import annotations

import inspect

from hvkit_plugins.stages.handcrafted.contour_hinge import hinge
from hvkit_plugins.stages.handcrafted.gsc import gsc
from hvkit_plugins.stages.handcrafted.hog import hog
from hvkit_plugins.stages.handcrafted.lbp import lbp
from hvkit_plugins.stages.handcrafted.pixels import pixels

HANDCRAFTED = {"pixels": pixels, "hog": hog, "lbp": lbp, "hinge": hinge, "gsc": gsc}
"""The ``evaluate`` stage's ``features`` that need no model, by name."""


def feature_options(name: str) -> list[str]:
    """The parameters a recipe may set for hand-crafted feature ``name`` (all but the images and ``chunk``)."""
    return [key for key in list(inspect.signature(HANDCRAFTED[name]).parameters)[1:] if key != "chunk"]
