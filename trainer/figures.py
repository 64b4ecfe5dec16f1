"""One home for how meshtrain draws a figure and writes it: matplotlib's Agg canvas (no display, no
pyplot state shared between callers) and an atomic PNG write that works on any etils path (local or
gs://). Used by the run report's plots and by `meshtrain plan --validate --plot`."""

from __future__ import annotations

import io

from etils import epath
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from meshtrain.trainer.storage.atomic import write_atomic


def new_figure(width: float = 7.0, height: float = 3.6) -> Figure:
    """An empty figure on its own Agg canvas, laid out by matplotlib's constrained layout."""
    figure = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def save_png(figure: Figure, path: epath.Path) -> None:
    """`figure` as a PNG at `path`, written whole or not at all."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    write_atomic(path, buffer.getvalue())
