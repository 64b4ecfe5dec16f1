"""One home for how meshtrain draws a figure: matplotlib's Agg canvas (no display, no pyplot state
shared between callers), rendered to PNG bytes the caller writes atomically where it wants (local or
gs://). Used by the run report's plots and by `meshtrain plan --validate --plot`."""

from __future__ import annotations

import io

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    """An empty figure on its own Agg canvas, laid out by matplotlib's constrained layout."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """`figure` rendered as a PNG file's bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
