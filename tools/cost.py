"""`meshtrain cost` (also `python -m meshtrain.tools cost`): what an experiment will cost before it is launched.

    meshtrain cost palm-540b-v4-6144                                # the experiment's own hardware
    meshtrain cost palm-540b-v4-6144 --tokens-per-sec-per-chip 38.79   # the paper's throughput
    meshtrain cost default model=gpt3-175b data.seq_len=2048 --hardware v100 --chips 1024 \\
        --flops-convention 6nd --tokens 300e9 --mfu 0.224 --json

Prints parameters, tokens, training FLOPs (under the named convention), throughput and MFU, wall
clock, chip-hours, dollars per price tier, and memory per chip against the chip's HBM, with what
would make the run fit when it does not. Tokens come from the experiment (train.steps through the
batch schedule, x data.seq_len) unless --tokens is given; MFU from --mfu, from a measured
--tokens-per-sec-per-chip, or else predicted for the experiment's layout by the performance model
(as `meshtrain plan` predicts it; the report says which). FLOPs conventions: palm (PaLM Appendix B, 6N + 12 L H Q T, the default), causal
(attention halved), 6nd (6N, as Kaplan, GPT-3 and Chinchilla count); MFU, time and cost all follow it.

--json prints one object: flops_convention, params_total, params_non_embedding,
model_flops_per_token, tokens_total, train_flops_total, train_flops_6nd, hardware_flops_total,
tokens_per_sec, mfu, hfu, wall_clock_days, chip_hours, cost_usd (on-demand; null without a price),
cost_usd_by_tier, prices, memory_per_chip_bytes {params, grads, optimizer, activations, total},
hbm_bytes_per_chip, fits, hardware, chips, peak_flops_per_chip, and suggestions when it does not fit;
memory_source and hardware_flops_per_token_source say where those came from ("analytic").

--aot compiles the train step for the TPU topology (hardware.topology or --topology, x num_slices;
as `meshtrain compile`: libtpu, no TPU) and takes memory and hardware FLOPs from it: memory_source
"xla" (memory_per_chip_bytes.total is XLA's peak per chip, its parts null; memory_per_chip_bytes_analytic
keeps the estimate), fits from the compile (false, with XLA's message in aot.error, when it runs out
of HBM), hardware_flops_per_token_source "aot" (the compiled step's matmul FLOPs per token, feeding
hardware_flops_total and hfu), hardware_flops_per_token_analytic and hardware_flops_aot_over_analytic.
Model FLOPs, MFU, time and cost stay analytic.

Exit status: 0 (also when the run does not fit: the report says so); 2 for bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

import jax

from meshtrain.model.dtypes import compute_dtype
from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    count_type,
    experiment_from_args,
    hardware_fields_overridden,
    number_type,
)
from meshtrain.tools.compile import add_target_arguments, check_target_arguments
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.formatting import (
    format_amount,
    format_bytes,
    format_count,
    format_dollars,
    format_mesh,
    format_si,
)
from meshtrain.trainer.planning.aot_compile import CompileReport, compile_report
from meshtrain.trainer.planning.cost_estimate import estimate_cost, on_hardware
from meshtrain.trainer.planning.cost_result import CostEstimate
from meshtrain.trainer.planning.flops import FLOPS_CONVENTIONS
from meshtrain.trainer.planning.peaks import GPU_MEMORY_FRACTION, GPU_MEMORY_FRACTION_ENV, measured_cpu_peak_flops


def _fraction(text: str) -> float:
    value = number_type("a fraction in (0, 1], e.g. 0.4 for 40%")(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"{text}: expected a fraction in (0, 1], e.g. 0.4 for 40% (not a percentage)")
    return value


def _override(text: str) -> tuple[str, object]:
    """FIELD=VALUE for --hardware-override: VALUE a number, null, true/false or text."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected FIELD=VALUE, e.g. peak_bf16_flops=3.5e14 or prices.on_demand=2.5"
        )
    key, raw = text.split("=", 1)
    value: object = raw
    if raw.lower() in ("null", "none", "~"):
        value = None
    else:
        for convert in (int, float):
            try:
                value = convert(raw)
                break
            except ValueError:
                pass
    return key.strip(), value


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="meshtrain cost", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_experiment_arguments(parser)
    parser.add_argument(
        "--hardware", metavar="KIND", help="hardware kind from configs/hardware.yaml (default: hardware.kind)"
    )
    parser.add_argument(
        "--chips",
        type=count_type("chips"),
        metavar="N",
        help="chips in the run (default: hardware.chips, or topology x num_slices)",
    )
    rate = parser.add_mutually_exclusive_group()
    rate.add_argument(
        "--mfu",
        type=_fraction,
        metavar="X",
        help="model FLOPs utilization to assume, in (0, 1] (default: predicted for the layout, as meshtrain plan does)",
    )
    rate.add_argument(
        "--tokens-per-sec-per-chip",
        type=number_type("tokens per second per chip"),
        metavar="Y",
        help="a measured throughput; MFU = Y x model FLOPs per token / peak",
    )
    parser.add_argument(
        "--peak-tflops",
        type=number_type("TFLOP/s per chip"),
        metavar="P",
        help="peak TFLOP/s per chip instead of configs/hardware.yaml's",
    )
    parser.add_argument(
        "--price",
        type=number_type("USD per chip-hour", positive=False),
        metavar="USD_PER_CHIP_HOUR",
        help="on-demand USD per chip-hour instead of configs/hardware.yaml's (its other tiers are then left out)",
    )
    parser.add_argument(
        "--tokens",
        type=number_type("training tokens"),
        metavar="D",
        help="training tokens (e.g. 300e9) instead of the experiment's steps x batch x seq_len",
    )
    parser.add_argument(
        "--flops-convention",
        choices=FLOPS_CONVENTIONS,
        default="palm",
        help="palm: 6N + 12 L H Q T (PaLM Appendix B, default); causal: attention halved; "
        "6nd: 6N (Kaplan, GPT-3, Chinchilla)",
    )
    parser.add_argument(
        "--hardware-override",
        type=_override,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="replace a field of the hardware entry, e.g. hbm_bytes=103079215104 or prices.spot=1.1 (repeatable)",
    )
    parser.add_argument(
        "--measure-cpu-peak",
        action="store_true",
        help="cpu: measure this machine's matmul peak again and replace the cached one (e.g. "
        "when it was measured while the machine was busy)",
    )
    parser.add_argument(
        "--aot",
        action="store_true",
        help="memory and hardware FLOPs from the AOT compile of the train step for the TPU "
        "topology (as meshtrain compile; needs libtpu, no TPU): XLA's peak bytes per chip "
        "and whether it fits, and the compiled step's matmul FLOPs",
    )
    add_target_arguments(parser, when="with --aot: ")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def run(args: argparse.Namespace) -> int:
    if not os.environ.get("JAX_PLATFORMS"):
        # Nothing runs on an accelerator here (abstract shapes, and on cpu a small matmul benchmark).
        jax.config.update("jax_platforms", "cpu")
    cfg, spec = on_hardware(experiment_from_args(args), args.hardware, keep=hardware_fields_overridden(args))
    if args.measure_cpu_peak and spec.platform == "cpu":
        measured_cpu_peak_flops(compute_dtype(cfg.model, "cpu").name, refresh=True)
    aot = None
    if args.aot:
        cfg, aot = aot_compile(cfg, args)
    elif args.topology is not None or args.num_slices is not None:
        raise UserError(
            "--topology and --num-slices name what --aot compiles for: add --aot (or set "
            "hardware.topology=... / hardware.num_slices=...)"
        )
    estimate = estimate_cost(
        cfg,
        hardware=args.hardware,
        chips=args.chips,
        mfu=args.mfu,
        tokens_per_sec_per_chip=args.tokens_per_sec_per_chip,
        peak_tflops=args.peak_tflops,
        price=args.price,
        tokens=args.tokens,
        convention=args.flops_convention,
        hardware_overrides=dict(args.hardware_override) or None,
        aot=aot,
    )
    print(json.dumps(estimate.as_dict(), indent=2) if args.json else format_estimate(estimate))
    return 0


def aot_compile(cfg, args: argparse.Namespace) -> tuple[object, CompileReport]:
    """(cfg on the compiled topology, the compile report of its train step) for --aot; a UserError
    unless the hardware is a TPU kind with a topology."""
    check_target_arguments(args)
    cfg, spec = on_hardware(cfg, args.hardware, dict(args.hardware_override) or None)
    if spec.platform != "tpu":
        raise UserError(
            f"--aot compiles the train step for a TPU topology, and {spec.kind} is not a TPU: "
            f"use a TPU kind (e.g. hardware.kind=tpu-v4 hardware.topology=v4:2x2x1), or drop --aot"
        )
    if args.topology is None and cfg.hardware.topology is None:
        raise UserError(
            f"--aot needs the {spec.kind} topology to compile for: set hardware.topology=... "
            f"(e.g. v4:2x2x1) or pass --topology"
        )
    aot = compile_report(cfg, topology=args.topology, num_slices=args.num_slices)
    # The estimate then describes the compiled chips: the topology's, not hardware.chips.
    cfg = dataclasses.replace(
        cfg, hardware=dataclasses.replace(cfg.hardware, topology=aot.topology, num_slices=aot.num_slices, chips=None)
    )
    return cfg, aot


# ---------------------------------------------------------------------------------------------
# The table


def _source_url(source: str | None) -> str:
    """The first URL of a price's source text (the rest is detail the JSON keeps)."""
    if not source:
        return ""
    for word in source.replace("(", " ").replace(";", " ").split():
        if word.startswith("http"):
            return word.rstrip(").,:")
    return source


def _memory_rows(r: CostEstimate) -> list[tuple[str, str]]:
    m = r.memory_per_chip_bytes
    limit = {
        "host": "host memory",
        "gpu pool": f"JAX GPU pool ({GPU_MEMORY_FRACTION:.0%} of HBM: {GPU_MEMORY_FRACTION_ENV})",
    }.get(r.memory_limit, "HBM")
    verdict = "fits" if r.fits else "does NOT fit"
    mesh = f"(mesh {format_mesh(r.mesh)})"
    hbm = format_bytes(r.hbm_bytes_per_chip)
    if r.aot is None:
        return [
            (
                "memory per chip",
                f"params {format_bytes(m['params'])}, grads {format_bytes(m['grads'])}, "
                f"optimizer {format_bytes(m['optimizer'])}, activations "
                f"{format_bytes(m['activations'])} (analytic)",
            ),
            ("", f"total {format_bytes(m['total'])} of {hbm} {limit}: {verdict} {mesh}"),
        ]
    compiled, analytic = r.aot.compile, format_bytes(r.aot.memory_per_chip_bytes_analytic["total"])
    if compiled.error:
        return [
            (
                "memory per chip",
                f"XLA (AOT compile for {compiled.topology}) ran out of {hbm} {limit}: does NOT fit {mesh}",
            ),
            *(("", line) for line in compiled.error.splitlines() if line.strip()),
            ("", f"(analytic estimate: {analytic} per chip)"),
        ]
    memory = compiled.memory
    parts = ", ".join(
        f"{name} {format_bytes(value)}"
        for name, value in (
            ("arguments", memory.argument_bytes_per_chip),
            ("outputs", memory.output_bytes_per_chip),
            ("donated", memory.alias_bytes_per_chip),
            ("temp", memory.temp_bytes_per_chip),
        )
    )
    return [
        ("memory per chip", f"XLA (AOT compile for {compiled.topology}): {parts}"),
        ("", f"peak {format_bytes(m['total'])} of {hbm} {limit}: {verdict} {mesh}; analytic {analytic}"),
    ]


def format_estimate(r: CostEstimate) -> str:
    """The estimate as an aligned table with units (PFLOP, days, $), naming the FLOPs convention."""
    rows: list[tuple[str, str]] = []
    add = rows.append
    add(("FLOPs convention", f"{r.flops_convention}: {r.flops_convention_description}"))
    add(
        (
            "hardware",
            f"{r.chips:,} x {r.hardware}, peak {format_si(r.peak_flops_per_chip, 'FLOP/s')} per "
            f"chip ({r.compute_dtype}; {r.peak_flops_source})",
        )
    )
    add(("parameters", f"{format_count(r.params_total)} total, {format_count(r.params_non_embedding)} non-embedding"))
    add(("tokens", f"{format_count(r.tokens_total)} (seq_len {r.seq_len:,})"))
    hardware = f"hardware {format_si(r.hardware_flops_per_token, 'FLOP')} with remat={r.remat}"
    if r.aot is not None:
        hardware += (
            f", from the AOT compile: {r.aot.hardware_flops_aot_over_analytic:.3f}x the analytic "
            f"{format_si(r.aot.hardware_flops_per_token_analytic, 'FLOP')}"
        )
    add(("model FLOPs / token", f"{format_si(r.model_flops_per_token, 'FLOP')} ({hardware})"))
    pflop = r.train_flops_total / 1e15
    add(
        (
            "training FLOPs",
            f"{format_amount(pflop)} PFLOP = {r.train_flops_total:.4g} FLOP = "
            f"{format_amount(pflop / 86400)} PF-days ({r.flops_convention})",
        )
    )
    if r.flops_convention != "6nd":
        add(("", f"{format_amount(r.train_flops_6nd / 1e15)} PFLOP counted as 6ND"))
    add(
        (
            "hardware FLOPs",
            f"{format_amount(r.hardware_flops_total / 1e15)} PFLOP (HFU {r.hfu:.1%}; "
            f"{'analytic' if r.aot is None else 'aot'})",
        )
    )
    add(("throughput", f"{r.tokens_per_sec:,.0f} tokens/s ({r.tokens_per_sec_per_chip:,.4g} per chip)"))
    add(("MFU", f"{r.mfu:.1%} ({r.mfu_source})"))
    days = r.wall_clock_days
    add(("wall clock", f"{days:,.1f} days" if days >= 1 else f"{days:.3g} days ({days * 24:.3g} hours)"))
    add(("chip-hours", format_amount(r.chip_hours)))
    if r.cost_usd_by_tier:
        width = max(len(tier) for tier in r.cost_usd_by_tier)
        for i, (tier, usd) in enumerate(r.cost_usd_by_tier.items()):
            price = r.prices[tier]
            when = ", ".join(x for x in (price.date, _source_url(price.source)) if x)
            add(
                (
                    "cost" if i == 0 else "",
                    f"{tier:<{width}}  {format_dollars(usd):>16}  at "
                    f"${price.usd_per_chip_hour:,.2f}/chip-hour" + (f" ({when})" if when else ""),
                )
            )
    else:
        add(("cost", f"unknown: no price for {r.hardware} in configs/hardware.yaml (pass --price USD_PER_CHIP_HOUR)"))
    rows += _memory_rows(r)
    for i, s in enumerate(r.suggestions or []):
        if s.memory_per_chip_bytes is None:
            text = f"{s.change}: {s.note or ''}"
        else:
            text = (
                f"{s.change}: {format_bytes(s.memory_per_chip_bytes)} per chip, "
                f"{'fits' if s.fits else 'still does not fit'}" + (f" ({s.note})" if s.note else "")
            ) + (" <- least extra time" if i == 0 and s.fits else "")
        add(("to fit" if i == 0 else "", text))
    width = max(len(label) for label, _ in rows)
    return "\n".join(
        [f"meshtrain cost: {r.experiment}"] + [f"  {label:<{width}}  {value}".rstrip() for label, value in rows]
    )


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
