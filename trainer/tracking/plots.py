"""The run report's PNG plots, drawn from metrics.jsonl (the whole run, across restarts) with
matplotlib's Agg canvas (no display, no pyplot state)."""

from __future__ import annotations

from etils import epath

from meshtrain.trainer.figures import new_figure, png_bytes
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path

PLOTS_DIR = "plots"


def write_plots(
    run_dir: epath.Path, train: dict[int, dict], evals: dict[int, dict], *, skip_throughput: set[int], priced: bool
) -> dict[str, str]:
    """loss.png (loss, eval loss and, for a mixture, each source's), throughput.png (tokens/s and MFU; steps in `skip_throughput`, a
    process's first, whose interval holds its compilation, left out) and cost.png (cumulative dollars,
    or chip-hours when `priced` is false) under run_dir/plots; returns {name: path relative to run_dir}."""
    out = as_path(run_dir) / PLOTS_DIR
    out.mkdir(exist_ok=True)
    steps = [s + 1 for s in train]  # a line logged at step s is the state after s + 1 steps
    written = {}

    figure = new_figure()
    ax = figure.add_subplot()
    ax.plot(steps, [r["loss"] for r in train.values()], label="loss", color="tab:blue")
    if evals:
        ax.plot(
            [s + 1 for s in evals],
            [r["eval_loss"] for r in evals.values()],
            "o-",
            label="eval loss",
            color="tab:orange",
        )
        sources = sorted({k for r in evals.values() for k in r if k.startswith("eval_loss/")})
        for source in sources if len(sources) > 1 else []:  # a mixture: each source beside the total
            points = {s: r[source] for s, r in evals.items() if source in r}
            ax.plot([s + 1 for s in points], list(points.values()), ".--", label=source.replace("eval_loss/", "eval: "))
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    write_atomic(out / "loss.png", png_bytes(figure))
    written["loss"] = f"{PLOTS_DIR}/loss.png"

    rated = {s: r for s, r in train.items() if s not in skip_throughput and "tokens_per_sec" in r}
    with_mfu = {s: r for s, r in rated.items() if r.get("mfu") is not None}
    figure = new_figure(height=5.4 if with_mfu else 3.6)
    axes = figure.subplots(2 if with_mfu else 1, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot([s + 1 for s in rated], [r["tokens_per_sec"] for r in rated.values()], ".-", color="tab:blue")
    axes[0].set(ylabel="tokens/s", title="Throughput")
    if with_mfu:  # MFU is tokens/s times a constant: its own panel, with HFU beside it
        axes[1].plot(
            [s + 1 for s in with_mfu], [100 * r["mfu"] for r in with_mfu.values()], ".-", color="tab:green", label="MFU"
        )
        axes[1].plot(
            [s + 1 for s in with_mfu],
            [100 * r["hfu"] for r in with_mfu.values()],
            ".--",
            color="tab:olive",
            label="HFU",
        )
        axes[1].set(ylabel="% of peak")
        axes[1].legend()
    for ax in axes:
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("step")
    write_atomic(out / "throughput.png", png_bytes(figure))
    written["throughput"] = f"{PLOTS_DIR}/throughput.png"

    key, label = ("cost_usd", "USD (on-demand)") if priced else ("chip_hours", "chip-hours")
    spent = {s: r for s, r in train.items() if r.get(key) is not None}
    figure = new_figure()
    ax = figure.add_subplot()
    ax.plot([s + 1 for s in spent], [r[key] for r in spent.values()], color="tab:red")
    ax.set(xlabel="step", ylabel=label, title="Cumulative cost" if priced else "Cumulative chip-hours (no price)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    write_atomic(out / "cost.png", png_bytes(figure))
    written["cost"] = f"{PLOTS_DIR}/cost.png"
    return written
