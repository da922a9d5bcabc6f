"""Matplotlib figures for evaluators, drawn off-screen (Agg) without touching pyplot's global state."""

from __future__ import annotations

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float, height: float) -> Figure:
    """A figure of ``width`` × ``height`` inches attached to an Agg canvas; save it with ``savefig(path)``."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure
