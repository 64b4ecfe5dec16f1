"""The performance model against published runs as one picture: `meshtrain plan --validate --plot FILE`.

Predicted MFU over published MFU, one point per run of configs/published_runs.yaml, coloured by the
chip family whose fitted efficiencies predict it; the runs held out of that fit are stars. The grey
rings are the baseline the model replaces (one constant MFU per hardware kind), so the picture shows
at a glance what the table's two error columns say: how far each sits from the diagonal, and which
runs fall outside the band of the issue's goal (15% of the published value), numbered and named under
the axes (the worst 30, in the table's order, when more fall outside).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from etils import epath

from meshtrain.trainer.figures import new_figure, png_bytes
from meshtrain.trainer.planning.published import Comparison, summarize
from meshtrain.trainer.storage.atomic import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

GOAL_BAND = 0.15  # |predicted / published - 1| the model aims to stay within on every run
FAMILY_COLOURS = {"tpu": "tab:blue", "nvidia": "tab:green"}
OTHER_COLOUR = "tab:purple"  # a family added to hardware.yaml without a colour of its own
MOST_NAMED = 30  # runs outside the band numbered and named; the rest are counted (the table has them all)
AXES_INCHES, LINE_INCHES = 7.0, 0.16  # the scatter's height; one line of the list under it (8 pt)


def validation_figure(comparisons: Sequence[Comparison]) -> Figure:
    """The scatter described in the module docstring, for `comparisons` (published.compare's)."""
    summary = summarize(comparisons)
    outside = [(100 * c.published_mfu, c) for c in comparisons if abs(c.error) > GOAL_BAND]
    worst = sorted(range(len(outside)), key=lambda i: -abs(outside[i][1].error))[:MOST_NAMED]
    named = [outside[i] for i in sorted(worst)]  # the worst, in the table's order
    lines = [f"{number}. {c.run.name}: {c.error:+.1%}" for number, (_, c) in enumerate(named, start=1)]
    if len(outside) > len(named):
        lines.append(f"... and {len(outside) - len(named)} more (`meshtrain plan --validate` lists every run)")
    notes_height = LINE_INCHES * (len(lines) + 2)
    figure = new_figure(width=8.0, height=AXES_INCHES + notes_height)
    ax, notes = figure.subplots(2, 1, height_ratios=[AXES_INCHES, notes_height])
    published = [100 * c.published_mfu for c in comparisons]
    every_value = published + [100 * c.predicted_mfu for c in comparisons]
    every_value += [p * (1 + c.baseline_error) for p, c in zip(published, comparisons)]
    low, high = 0.9 * min(every_value), 1.1 * max(every_value)
    diagonal = [low, high]
    ax.plot(diagonal, diagonal, color="black", linewidth=1, label="predicted = published")
    ax.fill_between(
        diagonal,
        [x * (1 - GOAL_BAND) for x in diagonal],
        [x * (1 + GOAL_BAND) for x in diagonal],
        color="grey",
        alpha=0.15,
        label=f"within {GOAL_BAND:.0%}",
    )
    ax.scatter(
        published,
        [p * (1 + c.baseline_error) for p, c in zip(published, comparisons)],
        facecolors="none",
        edgecolors="grey",
        s=30,
        label=f"constant MFU per kind (median {summary.baseline_median_abs_error:.1%} off)",
    )
    families = sorted({c.run.spec.efficiency_family for c in comparisons})
    for family in families:
        for held_out in (False, True):
            points = [
                (p, 100 * c.predicted_mfu)
                for p, c in zip(published, comparisons)
                if c.run.spec.efficiency_family == family and c.run.held_out == held_out
            ]
            if not points:
                continue
            ax.scatter(
                [x for x, _ in points],
                [y for _, y in points],
                marker="*" if held_out else "o",
                s=140 if held_out else 30,
                color=FAMILY_COLOURS.get(family, OTHER_COLOUR),
                edgecolors="black" if held_out else "none",
                label=f"{family}{', held out of the fit' if held_out else ''}",
            )
    for number, (p, c) in enumerate(named, start=1):
        ax.annotate(
            str(number),
            (p, 100 * c.predicted_mfu),
            xytext=(4, 2 + 8 * (number % 2)),
            textcoords="offset points",
            fontsize=8,
        )
    notes.axis("off")
    notes.text(
        0,
        1,
        f"Outside {GOAL_BAND:.0%} of the published MFU:\n" + ("\n".join(lines) if lines else "none"),
        va="top",
        fontsize=8,
        transform=notes.transAxes,
    )
    ax.set(
        xlim=(low, high),
        ylim=(low, high),
        aspect="equal",
        xlabel="published MFU (%)",
        ylabel="predicted MFU (%)",
        title=(
            f"{summary.count} published runs: predicted MFU a median {summary.median_abs_error:.1%} off, "
            f"worst {summary.worst_abs_error:.1%}"
        ),
    )
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return figure


def write_validation_plot(comparisons: Sequence[Comparison], path: epath.Path) -> None:
    write_atomic(path, png_bytes(validation_figure(comparisons)))
