"""One home for how meshtrain draws a figure: matplotlib's Agg canvas (no display, no pyplot state
shared between callers), rendered to PNG bytes the caller writes atomically where it wants (local or
gs://). Used by the run report's plots and by `meshtrain plan --validate --plot`."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    """An empty figure on its own Agg canvas, laid out by matplotlib's constrained layout.

    matplotlib is imported here, on the first figure, not with this module: every `meshtrain train`
    and `meshtrain plan` imports the modules that draw, and most never draw; importing it up front
    would add ~0.4 s to each one's start."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def png_bytes(figure: Figure) -> bytes:
    """`figure` rendered as a PNG file's bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
