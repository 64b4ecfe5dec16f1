"""The run report: report.json and report.md (with PNG plots) in the run directory, written by
process 0 when training ends or is interrupted, from the goodput record and metrics.jsonl, so it
covers the whole run across restarts. Every file is written to a temporary name and renamed.

report.json fields:
  experiment, run_dir, status (finished | interrupted | diverged | failed), written_at
  steps, steps_configured, tokens, seq_len
  flops_convention, flops_convention_description ("palm: PaLM Appendix B, 6N + 12LHQT, ...")
  params_total, model_flops_per_token, hardware_flops_per_token, remat
  model_flops_total, hardware_flops_total: per token x tokens (steps redone after a restart are not
      counted again)
  hardware: kind, platform, chips, peak_flops_per_chip, compute_dtype, peak_source,
      price_per_chip_hour, device_platform (what the devices really were)
  wall_s, chip_hours, cost_usd (on-demand; null without a price)
  mfu_mean, mfu_median, hfu_mean, hfu_median, model_tflops_per_chip_mean, model_tflops_per_chip_median,
      tokens_per_sec_mean, tokens_per_sec_median: over the logged intervals, each process's first
      left out (it holds the compilation)
  mfu_over_wall: model FLOPs / (chips x peak x the whole wall time): utilization net of goodput
  goodput: wall_s, parts_s, parts_pct, goodput_pct, steps_redone, segments (trainer/tracking/goodput.py)
  final_loss, final_eval_loss, final_eval_loss_by_source {source: loss},
      plots {loss, throughput, cost} (paths relative to the run directory)
"""

from __future__ import annotations

import datetime
import json
import statistics

from etils import epath

from meshtrain.trainer.config.batch_schedule import tokens_through
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.formatting import (
    MISSING,
    format_amount,
    format_bytes,
    format_dollars,
    format_duration,
    format_number,
    format_percent,
    format_si,
)
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path
from meshtrain.trainer.tracking.goodput import PARTS
from meshtrain.trainer.tracking.metrics_log import finite_or_null, latest_by_step, read_metrics
from meshtrain.trainer.tracking.plots import write_plots
from meshtrain.trainer.tracking.recoveries import describe, load_recoveries
from meshtrain.trainer.tracking.run_arithmetic import (
    CONVENTION_TEXT,
    FLOPS_CONVENTION,
    RunArithmetic,
)

PROFILE_DIR = "profile"  # where trainer/run/profiler.py writes its traces, under the run directory

PART_LABELS = {
    "productive": "productive steps",
    "compilation": "compilation",
    "data_wait": "data waits",
    "evaluation": "evaluation",
    "checkpointing": "checkpointing",
    "restart_loss": "lost to restarts (steps redone)",
    "startup": "startup",
    "other": "other (logging, bookkeeping)",
}


def _mean_median(values: list[float]) -> tuple[float | None, float | None]:
    return (statistics.fmean(values), statistics.median(values)) if values else (None, None)


def _by_source(eval_record: dict) -> dict[str, float]:
    """{source: eval loss} of an eval record's eval_loss/<source> entries."""
    return {k.split("/", 1)[1]: v for k, v in eval_record.items() if k.startswith("eval_loss/")}


def build_report(
    run_dir: epath.Path, cfg: ExperimentConfig, arithmetic: RunArithmetic, goodput: dict, *, status: str
) -> dict:
    """report.json's object (module docstring); plots are added by write_report."""
    records = read_metrics(run_dir)
    train, evals = latest_by_step(records, "loss"), latest_by_step(records, "eval_loss")
    first_steps = {segment["start_step"] for segment in goodput["segments"]}
    rated = [r for s, r in train.items() if s not in first_steps and "model_tflops_per_chip" in r]
    steps = goodput["steps_done"]
    tokens = tokens_through(cfg.train, cfg.data.seq_len, steps)
    a = arithmetic
    chip_hours = goodput["chip_seconds"] / 3600.0
    model_flops = a.model_flops_per_token * tokens
    stats = {}
    for key in ("mfu", "hfu", "model_tflops_per_chip", "tokens_per_sec"):
        stats[f"{key}_mean"], stats[f"{key}_median"] = _mean_median([r[key] for r in rated if r.get(key) is not None])
    wall, peak = goodput["wall_s"], a.peak_flops_per_chip
    return {
        "experiment": cfg.name,
        "run_dir": str(run_dir),
        "status": status,
        "written_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "steps": steps,
        "steps_configured": cfg.train.steps,
        "tokens": tokens,
        "seq_len": cfg.data.seq_len,
        "flops_convention": FLOPS_CONVENTION,
        "flops_convention_description": CONVENTION_TEXT,
        "params_total": a.params_total,
        "model_flops_per_token": a.model_flops_per_token,
        "hardware_flops_per_token": a.hardware_flops_per_token,
        "remat": a.remat,
        "model_flops_total": model_flops,
        "hardware_flops_total": a.hardware_flops_per_token * tokens,
        "hardware": {
            "kind": a.hardware,
            "platform": a.platform,
            "chips": a.chips,
            "peak_flops_per_chip": peak,
            "compute_dtype": a.compute_dtype,
            "peak_source": a.peak_source,
            "price_per_chip_hour": a.price_per_chip_hour,
            "device_platform": a.device_platform,
        },
        "wall_s": wall,
        "chip_hours": chip_hours,
        "cost_usd": None if a.price_per_chip_hour is None else chip_hours * a.price_per_chip_hour,
        **stats,
        "mfu_over_wall": model_flops / (a.chips * peak * wall) if wall > 0 and peak is not None else None,
        "goodput": {
            key: goodput[key] for key in ("wall_s", "parts_s", "parts_pct", "goodput_pct", "steps_redone", "segments")
        },
        "skipped_steps": train[max(train)].get("skipped_steps", 0) if train else 0,
        "recoveries": load_recoveries(run_dir),
        "final_loss": train[max(train)]["loss"] if train else None,
        "final_eval_loss": evals[max(evals)]["eval_loss"] if evals else None,
        "final_eval_loss_by_source": _by_source(evals[max(evals)]) if evals else {},
        "device_peak_bytes": max(
            (r["device_peak_bytes"] for r in train.values() if "device_peak_bytes" in r), default=None
        ),
        "profiles": _profiles(run_dir),
    }


def _profiles(run_dir: epath.Path) -> list[str]:
    """The traces trainer/run/profiler.py wrote, relative to run_dir (one folder per profile)."""
    traces = as_path(run_dir) / PROFILE_DIR / "plugins" / "profile"
    if not traces.is_dir():
        return []
    return sorted(f"{PROFILE_DIR}/plugins/profile/{p.name}" for p in traces.iterdir())


def _table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    """A markdown table: the first column left-aligned (labels), the others right-aligned (numbers)."""
    rule = "|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(map(str, row)) + " |" for row in rows]


def render_markdown(r: dict) -> str:
    hw = r["hardware"]
    peak = hw["peak_flops_per_chip"]
    lines = [
        f"# Run report: {r['experiment']}",
        "",
        f"`{r['run_dir']}`: {r['status']} at step {r['steps']:,} of {r['steps_configured']:,} ({r['written_at']}).",
        "",
        f"Hardware: {hw['chips']} x `{hw['kind']}`, peak {format_si(peak, 'FLOP/s')} per chip "
        f"({hw['compute_dtype']}; {hw['peak_source']}); "
        + (
            "no price for this kind: cost not computed."
            if hw["price_per_chip_hour"] is None
            else f"on-demand price ${hw['price_per_chip_hour']:,.2f} per chip-hour."
        ),
        "",
        f"FLOPs convention: **{r['flops_convention_description']}**. Model FLOPs per token "
        f"{r['model_flops_per_token']:.4g} ({r['params_total']:,} parameters, seq_len {r['seq_len']}); "
        f"hardware FLOPs per token {r['hardware_flops_per_token']:.4g} (remat={r['remat']}).",
    ]
    if hw["platform"] != {"cuda": "gpu", "rocm": "gpu"}.get(hw["device_platform"], hw["device_platform"]):
        lines += [
            "",
            f"Note: the devices were `{hw['device_platform']}`, not `{hw['kind']}`: utilization and "
            f"cost are computed as if they were {hw['kind']} chips.",
        ]
    cost = f"{MISSING} (no price)" if r["cost_usd"] is None else format_dollars(r["cost_usd"])
    lines += ["", "## Totals", ""] + _table(
        ("", "value"),
        [
            ("steps", f"{r['steps']:,}"),
            ("tokens", f"{r['tokens']:,}"),
            ("model FLOPs", f"{r['model_flops_total']:.4g}"),
            ("hardware FLOPs", f"{r['hardware_flops_total']:.4g}"),
            ("wall time", f"{format_duration(r['wall_s'])} ({r['wall_s']:,.1f} s)"),
            ("chip-hours", format_number(r["chip_hours"])),
            ("cost (on-demand)", cost),
            ("final loss", format_number(r["final_loss"])),
            ("final eval loss", format_number(r["final_eval_loss"])),
            *(
                (f"final eval loss, {name}", format_number(loss))
                for name, loss in r["final_eval_loss_by_source"].items()
                if len(r["final_eval_loss_by_source"]) > 1
            ),
            *([("peak device memory", format_bytes(r["device_peak_bytes"]))] if r["device_peak_bytes"] else []),
        ],
    )
    lines += [
        "",
        "## Utilization",
        "",
        "Over the logged intervals (each process's first, which holds its compilation, left out).",
        "",
    ]
    lines += _table(
        ("", "mean", "median"),
        [
            ("MFU", format_percent(r["mfu_mean"]), format_percent(r["mfu_median"])),
            ("HFU", format_percent(r["hfu_mean"]), format_percent(r["hfu_median"])),
            (
                "model TFLOP/s per chip",
                format_number(r["model_tflops_per_chip_mean"]),
                format_number(r["model_tflops_per_chip_median"]),
            ),
            ("tokens/s", format_amount(r["tokens_per_sec_mean"]), format_amount(r["tokens_per_sec_median"])),
        ],
    )
    lines += ["", f"MFU over the whole wall time (goodput included): {format_percent(r['mfu_over_wall'])}."]
    g = r["goodput"]
    redone = f"; {g['steps_redone']} steps were computed twice after restarts" if g["steps_redone"] else ""
    lines += ["", "## Goodput", "", f"{g['goodput_pct']:.1f}% of the wall time was productive steps{redone}.", ""]
    lines += _table(
        ("part", "seconds", "%"),
        [(PART_LABELS[p], f"{g['parts_s'][p]:,.2f}", f"{g['parts_pct'][p]:.1f}") for p in PARTS],
    )
    lines += [f"| **wall time** | **{g['wall_s']:,.2f}** | **100.0** |"]
    hits = sum(s.get("compile_cache_hits", 0) for s in g["segments"])
    if hits:
        saved = sum(s.get("compile_time_saved_s", 0.0) for s in g["segments"])
        lines += ["", f"The compilation cache saved {saved:,.1f} s of compilation ({hits} executables read back)."]
    if len(g["segments"]) > 1:
        lines += ["", "Processes (restarts):", ""] + _table(
            ("started", "steps", "wall s", "chips"),
            [
                (s["started_at"], f"{s['start_step']} -> {s['end_step']}", f"{s['wall_s']:,.1f}", s["chips"])
                for s in g["segments"]
            ],
        )
    if r["skipped_steps"] or r["recoveries"]:
        lines += [
            "",
            "## Loss spikes",
            "",
            f"{r['skipped_steps']} steps applied no update (a loss spike or a non-finite loss or gradient) "
            f"on the trajectory that produced the final state; {len(r['recoveries'])} rewinds.",
        ]
        if r["recoveries"]:
            lines += [""] + [f"- {describe(recovery)}" for recovery in r["recoveries"]]
    if r["profiles"]:
        lines += [
            "",
            "## Profile",
            "",
            f"`tensorboard --logdir {PROFILE_DIR}` (profile plugin), or a trace.json.gz in Perfetto:",
            "",
        ]
        lines += [f"- [{path}]({path})" for path in r["profiles"]]
    plots = r.get("plots", {})
    titles = {
        "loss": "Loss",
        "throughput": "Throughput: tokens/s and MFU",
        "cost": "Cumulative cost" if r["cost_usd"] is not None else "Cumulative chip-hours",
    }
    if plots:
        lines += ["", "## Plots", ""]
        for name, path in plots.items():
            lines += [f"![{titles[name]}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(
    run_dir: epath.Path, cfg: ExperimentConfig, arithmetic: RunArithmetic, goodput: dict, *, status: str
) -> epath.Path:
    """Writes plots/, report.json and report.md into run_dir; returns report.md's path."""
    run_dir = as_path(run_dir)
    report = build_report(run_dir, cfg, arithmetic, goodput, status=status)
    records = read_metrics(run_dir)
    report["plots"] = write_plots(
        run_dir,
        latest_by_step(records, "loss"),
        latest_by_step(records, "eval_loss"),
        skip_throughput={s["start_step"] for s in goodput["segments"]},
        priced=report["cost_usd"] is not None,
    )
    write_atomic(run_dir / "report.json", json.dumps(finite_or_null(report), indent=1, allow_nan=False) + "\n")
    write_atomic(run_dir / "report.md", render_markdown(report))
    return run_dir / "report.md"
