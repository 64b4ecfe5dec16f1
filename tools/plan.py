"""`meshtrain plan` (also `python -m meshtrain.tools plan`): which layout, how many chips, how long and
how much, predicted from the chips' published figures before anything runs.
  meshtrain plan palm-540b-v4-6144 --chips 6144                 # the best layouts on PaLM's chips
  meshtrain plan default model=gpt3-175b data.seq_len=2048 train.batch_size=1536 --hardware a100-80gb --chips 1024
  meshtrain plan palm-540b-v4-6144 --deadline-days 60           # the cheapest layout that finishes in time
  meshtrain plan palm-540b-v4-6144 --budget-usd 20e6            # the fastest layout within a budget
  meshtrain plan --validate                                     # the model against published runs
  meshtrain plan --validate --plot validation.png               # ... and as a picture
  meshtrain plan --validate --runs my_runs.yaml                 # the model against your own measured runs
  meshtrain plan default model.d_model=256 --calibrate runs/default   # refit to a run's step times, predict
Every mesh split (tensor inside a slice or server; FSDP or data parallelism over the rest; data or
FSDP across slices over DCN), microbatch count and remat policy is predicted by the performance model
(trainer/planning/performance.py: compute, memory-bound work and exposed communication per axis,
from configs/hardware.yaml) and kept when it fits in memory. The table shows the best candidates with
their mesh, microbatches, remat, predicted MFU, days, chip-hours, dollars at the --tier price (the
JSON has every tier), memory per chip and the bottleneck, then the key=value line and the launch command for the first. Without
--chips, chip counts are powers of two (TPUs: whole slices beyond a pod; GPUs: whole servers).
--aot [K] (TPU kinds) compiles the best K candidates (default 3) for their topology, as `meshtrain
compile` does, and XLA's peak memory decides whether they fit (marked "(xla)").
--calibrate RUN fits the model's free efficiencies to the step times RUN measured (its metrics.jsonl)
and predicts the experiment with them. --json prints one object.
Exit status: 0; 2 for bad input (an impossible deadline or budget names the fastest time or the
cheapest cost that can be reached; a chip count no layout fits names the nearest that do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys

import jax

from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    count_type,
    experiment_from_args,
    hardware_fields_overridden,
    number_type,
    split_experiment_and_overrides,
)
from meshtrain.trainer.config.hardware import PRICE_TIERS, efficiency_family
from meshtrain.trainer.config.serialize import load_config_file
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.formatting import format_bytes, format_dollars, format_percent
from meshtrain.trainer.planning.aot_compile import compile_report
from meshtrain.trainer.planning.calibrate import Fit, Observation, fit_family
from meshtrain.trainer.planning.cost_estimate import on_hardware, resolve_chips
from meshtrain.trainer.planning.experiment_prediction import observed_step, predict_experiment
from meshtrain.trainer.planning.layout_search import (
    MAX_CHIPS,
    Candidate,
    chip_counts,
    laid_out,
    plan_layouts,
)
from meshtrain.trainer.planning.published import compare, published_runs, summarize
from meshtrain.trainer.planning.validation_plot import write_validation_plot
from meshtrain.trainer.storage.paths import as_path, is_url
from meshtrain.trainer.tracking.metrics_log import read_metrics


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="meshtrain plan", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_experiment_arguments(parser)
    parser.add_argument("--hardware", metavar="KIND", help="a kind of configs/hardware.yaml (default: hardware.kind)")
    goal = parser.add_mutually_exclusive_group()
    goal.add_argument("--chips", type=count_type("chips"), metavar="N", help="plan on exactly N chips")
    goal.add_argument(
        "--budget-usd", type=number_type("--budget-usd: USD"), metavar="X", help="fastest layout costing <= X"
    )
    goal.add_argument(
        "--deadline-days", type=number_type("--deadline-days: days"), metavar="D", help="cheapest layout done in D days"
    )
    parser.add_argument("--tier", default="on_demand", choices=PRICE_TIERS, help="the price tier dollars rank by")
    parser.add_argument(
        "--top", type=count_type("candidates"), default=8, metavar="N", help="candidates to show (default 8)"
    )
    parser.add_argument("--validate", action="store_true", help="the model against configs/published_runs.yaml")
    parser.add_argument(
        "--runs",
        metavar="YAML",
        help="with --validate: your own runs, laid out as configs/published_runs.yaml (default: that file)",
    )
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="with --validate: also draw predicted against published MFU to PNG (local or gs://)",
    )
    parser.add_argument("--calibrate", metavar="RUN", help="fit the model's efficiencies to RUN's measured step times")
    parser.add_argument(
        "--aot",
        type=count_type("candidates to compile"),
        nargs="?",
        const=3,
        metavar="K",
        help="TPU kinds: AOT-compile the best K candidates (default 3) for their topology, as meshtrain "
        "compile does (libtpu, no TPU), and let XLA's peak memory decide whether they fit",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def run(args: argparse.Namespace) -> int:
    jax.config.update("jax_platforms", "cpu")  # planning runs nothing on an accelerator
    for option, value in (("--plot", args.plot), ("--runs", args.runs)):
        if value and not args.validate:
            raise UserError(f"{option} {value}: it belongs to the --validate comparison; add --validate")
    if args.validate:
        return _validate(args)
    cfg = experiment_from_args(args)
    cfg, spec = on_hardware(cfg, args.hardware, keep=hardware_fields_overridden(args))
    if args.calibrate:
        return _calibrated_prediction(cfg, spec, args)
    if args.chips is not None:
        counts = [args.chips]
    elif spec.platform == "cpu":
        counts = [resolve_chips(cfg, spec)]
    else:
        counts = chip_counts(spec)
    candidates = plan_layouts(cfg, spec, counts)
    if not candidates:
        raise UserError(_nothing_fits(cfg, spec, counts))
    ranked = _rank(candidates, args)
    if args.aot:
        ranked = _compiled(cfg, spec, ranked, args.aot)
    if args.json:
        print(
            json.dumps(
                {
                    "experiment": cfg.name,
                    "hardware": spec.kind,
                    "candidates": [c.as_dict() for c in ranked[: args.top]],
                },
                indent=2,
            )
        )
    else:
        print(_table(cfg.name, spec, ranked[: args.top], args.tier, args))
    return 0


def _cost(c: Candidate, tier: str) -> float:
    return c.dollars.get(tier, c.chip_hours)  # no price: chip-hours rank the same way


def _rank(candidates: list[Candidate], args: argparse.Namespace) -> list[Candidate]:
    """Candidates in the order asked for, after the budget or deadline filter (UserError when none pass)."""
    tier = args.tier
    if args.deadline_days is not None:
        kept = [c for c in candidates if c.days <= args.deadline_days]
        if not kept:
            fastest = min(candidates, key=lambda c: c.days)
            raise UserError(
                f"--deadline-days {args.deadline_days:g}: no layout finishes in time; the fastest reachable is "
                f"{fastest.days:.1f} days ({fastest.chips} chips, {fastest.layout.describe()})"
            )
        return sorted(kept, key=lambda c: (_cost(c, tier), c.days))
    if args.budget_usd is not None:
        kept = [c for c in candidates if _cost(c, tier) <= args.budget_usd]
        if not kept:
            cheapest = min(candidates, key=lambda c: _cost(c, tier))
            raise UserError(
                f"--budget-usd {args.budget_usd:g}: no layout costs that little; the cheapest reachable is "
                f"{format_dollars(_cost(cheapest, tier))} ({cheapest.chips} chips, {cheapest.days:.1f} days)"
            )
        return sorted(kept, key=lambda c: (c.days, _cost(c, tier)))
    return sorted(candidates, key=lambda c: (c.days, _cost(c, tier)) if args.chips else (_cost(c, tier), c.days))


def _compiled(cfg, spec, ranked: list[Candidate], count: int) -> list[Candidate]:
    """The first `count` candidates AOT-compiled for their TPU topology: XLA's peak memory replaces
    the analytic one, and those that do not fit are dropped (UserError when none of them fits)."""
    if spec.platform != "tpu":
        raise UserError(f"--aot compiles for a TPU topology and {spec.kind} is not a TPU: drop --aot")
    checked, refused = [], []
    for candidate in ranked[:count]:
        report = compile_report(
            laid_out(cfg, candidate.layout, candidate.chips, candidate.num_slices, candidate.microbatch_rows),
            topology=candidate.topology,
            num_slices=candidate.num_slices,
        )
        peak = report.memory.peak_bytes_per_chip
        if report.fits and peak is not None:
            checked.append(dataclasses.replace(candidate, memory_bytes=peak, memory_source="xla"))
        else:
            refused.append(f"{candidate.layout.describe()} ({report.error or 'no peak reported'})")
    if not checked:
        raise UserError(f"--aot: none of the best {count} layouts fits when XLA compiles it: {'; '.join(refused)}")
    return checked + ranked[count:]


def _nothing_fits(cfg, spec, counts: list[int]) -> str:
    """One line for a chip count (or range) on which no layout fits or divides, naming nearby ones that do."""
    wanted = counts[0] if len(counts) == 1 else None
    if wanted is None:
        return f"{cfg.name} fits no layout on up to {MAX_CHIPS} {spec.kind} chips (memory per chip too small)"
    nearby = sorted(
        set(chip_counts(spec)) | {wanted - wanted % 8, wanted + 8 - wanted % 8} - {wanted},
        key=lambda n: abs(n - wanted),
    )
    working = []
    for n in nearby:
        if n >= 1 and plan_layouts(cfg, spec, [n], remat_policies=("full",)):
            working.append(n)
        if len(working) == 2:
            break
    return (
        f"--chips {wanted}: no layout of {cfg.name} on {wanted} {spec.kind} chips both divides the batch "
        f"and fits in memory; nearest chip counts that work: {', '.join(map(str, sorted(working))) or 'none found'}"
    )


def _table(name: str, spec, candidates: list[Candidate], tier: str, args: argparse.Namespace) -> str:
    header = ("chips", "mesh", "mb", "remat", "MFU", "days", "chip-hours", f"$ {tier}", "memory/chip", "bottleneck")
    rows = [
        (
            str(c.chips),
            c.layout.describe(),
            str(c.layout.microbatches),
            c.layout.remat,
            format_percent(c.prediction.mfu),
            f"{c.days:.1f}",
            f"{c.chip_hours:,.0f}",
            format_dollars(c.dollars.get(tier)),
            f"{format_bytes(c.memory_bytes)} / {format_bytes(c.memory_limit)}"
            + (" (xla)" if c.memory_source == "xla" else ""),
            c.prediction.bottleneck,
        )
        for c in candidates
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [f"meshtrain plan: {name} on {spec.kind} (predicted; MFU in PaLM's convention)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header, *rows]]
    best = candidates[0]
    experiment, extra = split_experiment_and_overrides(args.args)
    settings = " ".join([*extra, f"hardware.kind={spec.kind}", *best.overrides])
    lines += [
        "",
        f"chosen: {best.chips} chips, {best.layout.describe()}, {best.layout.microbatches} microbatch(es), "
        f"remat {best.layout.remat}: step {best.prediction.step_s:.3g} s, {best.days:.1f} days",
        f"  {settings}",
        f"  launch: meshtrain launch {experiment or 'default'} {settings} "
        f"--recipe {'tpu-vm' if spec.platform == 'tpu' else 'slurm'}",
    ]
    return "\n".join(lines)


def _validate(args: argparse.Namespace) -> int:
    plot = as_path(args.plot) if args.plot else None
    if plot is not None and not is_url(plot) and not plot.parent.is_dir():
        raise UserError(f"--plot {args.plot}: no directory {plot.parent} to write it in")
    comparisons = [compare(run) for run in published_runs(args.runs)]
    summary = summarize(comparisons)
    held_out = [c for c in comparisons if c.run.held_out]
    held_out_summary = summarize(held_out) if held_out else None  # the check on data the fit never saw
    if plot is not None:
        try:
            write_validation_plot(comparisons, plot)
        except OSError as e:
            raise UserError(f"--plot {args.plot}: cannot write: {e.strerror or e}") from None
    if args.json:
        rows = [
            {
                "name": c.run.name,
                "held_out": c.run.held_out,
                "hardware": c.run.spec.kind,
                "chips": c.run.layout.chips,
                "published_mfu": c.published_mfu,
                "predicted_mfu": c.predicted_mfu,
                "error": c.error,
                "baseline_error": c.baseline_error,
                "bottleneck": c.prediction.bottleneck,
            }
            for c in comparisons
        ]
        held_out_json = dataclasses.asdict(held_out_summary) if held_out_summary else None
        print(json.dumps({"runs": rows, "summary": dataclasses.asdict(summary), "held_out": held_out_json}, indent=2))
        return 0
    print("| run | chips | published MFU | predicted | error | constant-MFU error | predicted bottleneck |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for c in comparisons:
        print(
            f"| {c.run.name}{' (held out of the fit)' if c.run.held_out else ''} | {c.run.layout.chips} | "
            f"{format_percent(c.published_mfu)} | "
            f"{format_percent(c.predicted_mfu)} | {c.error:+.1%} | {c.baseline_error:+.1%} | {c.prediction.bottleneck} |"
        )
    print(
        f"\n{summary.count} run{'s' if summary.count != 1 else ''}: median |error| {summary.median_abs_error:.1%}, worst {summary.worst_abs_error:.1%} "
        f"({summary.worst_run}); constant MFU per kind: median {summary.baseline_median_abs_error:.1%}, "
        f"worst {summary.baseline_worst_abs_error:.1%}"
    )
    if held_out_summary is not None:
        print(
            f"{held_out_summary.count} of them held out of the fit: median |error| "
            f"{held_out_summary.median_abs_error:.1%}, worst {held_out_summary.worst_abs_error:.1%} "
            f"({held_out_summary.worst_run})"
        )
    return 0


def run_observation(run_dir: str) -> Observation:
    """A run's measured step: its config and the median of its logged step times (the first logged
    line, which holds the compile, left out)."""
    path = as_path(run_dir)
    if not (path / "config.yaml").exists():
        raise UserError(f"--calibrate {run_dir}: no config.yaml there (expected a run directory: runs/NAME)")
    cfg = load_config_file(path / "config.yaml")
    times = [r["step_time_s"] for r in read_metrics(path) if "step_time_s" in r][1:]
    if not times:
        raise UserError(f"--calibrate {run_dir}: metrics.jsonl has no step times after the first logged line")
    cfg, spec = on_hardware(cfg, None)
    return observed_step(cfg, spec, resolve_chips(cfg, spec), statistics.median(times), str(run_dir))


def _calibrated_prediction(cfg, spec, args: argparse.Namespace) -> int:
    measured = run_observation(args.calibrate)
    if measured.spec.kind != spec.kind:
        raise UserError(
            f"--calibrate {args.calibrate} ran on {measured.spec.kind}: plan on it too (--hardware {measured.spec.kind})"
        )
    fit: Fit = fit_family(efficiency_family(spec), [measured])
    chips = args.chips or resolve_chips(cfg, spec)
    before = predict_experiment(cfg, spec, chips)
    after = predict_experiment(cfg, spec, chips, fit.family)
    if args.json:
        print(
            json.dumps(
                {
                    "calibrated_on": args.calibrate,
                    "measured_step_s": measured.step_s,
                    "fit_error_before": fit.error_before,
                    "fit_error_after": fit.error_after,
                    "efficiencies": {k: {"before": a, "after": b} for k, (a, b) in fit.moved.items()},
                    "prediction_before": before.as_dict(),
                    "prediction": after.as_dict(),
                },
                indent=2,
            )
        )
        return 0
    print(f"calibrated on {args.calibrate}: measured {measured.step_s:.4g} s per step")
    print(f"  fit: {fit.error_before:.1%} -> {fit.error_after:.1%} off the measured step time")
    for field, (a, b) in fit.moved.items():
        print(f"  {field}: {a:.4g} -> {b:.4g}")
    print(
        f"{cfg.name} on {chips} {spec.kind}: {after.step_s:.4g} s per step ({before.step_s:.4g} s uncalibrated), "
        f"MFU {format_percent(after.mfu)}; {after.bottleneck}"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
