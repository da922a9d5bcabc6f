"""Matplotlib figures for evaluators, drawn off-screen (Agg) without touching pyplot's global state."""

from __future__ import annotations

from typing import Any


def new_figure(width: float, height: float) -> Any:
    """A matplotlib ``Figure`` of ``width`` × ``height`` inches on an Agg canvas; save it with ``savefig(path)``.

    matplotlib is imported here, on first use, so that loading the evaluators stays fast.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure
