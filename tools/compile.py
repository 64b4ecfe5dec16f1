"""`meshtrain compile` (also `python -m meshtrain.tools compile`): compile an experiment's train step for a TPU
topology on this machine, and say whether it fits.

    meshtrain compile palm-540b-v4-6144 --topology v4:12x16x16 --num-slices 2
    meshtrain compile model.num_layers=2 --topology v4:2x2x1 --json

The step is the real one, compiled by libtpu for compile-only devices of the topology: no TPU,
no allocation (trainer/planning/aot_compile.py). Reported per chip: XLA's argument, output, aliased
(donated), temporary and peak bytes against the chip's HBM (configs/hardware.yaml), the step's
FLOPs, and the compile time. A batch ramp is compiled at each of its batch sizes (each stage is
its own program); the JSON object is the largest stage's, with every stage under "stages".

Exit status: 0 when the step fits (at every stage); 3 when it does not (XLA ran out of HBM while compiling, reported
with XLA's own message, or the peak exceeds the chip's HBM), the report still printed; 2 for bad
input (a malformed topology, libtpu missing, a layout that does not divide); anything else is a bug.
"""

from __future__ import annotations

import argparse
import json
import sys

from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    experiment_from_args,
)
from meshtrain.trainer.config.hardware import parse_topology
from meshtrain.trainer.errors import ConfigError, UserError
from meshtrain.trainer.formatting import format_bytes, format_mesh
from meshtrain.trainer.planning.aot_compile import CompileReport, compile_stages

EXIT_DOES_NOT_FIT = 3


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="meshtrain compile", description=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    add_experiment_arguments(parser)
    add_target_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return parser


def add_target_arguments(parser: argparse.ArgumentParser, when: str = "") -> None:
    """--topology and --num-slices, the TPU target of a compile (also `meshtrain cost --aot`)."""
    parser.add_argument(
        "--topology",
        metavar="NAME",
        help=f"{when}TPU topology, e.g. v4:12x16x16 (3072 chips) or v4:2x2x1; a bare 2x2x1 "
        "takes the generation of hardware.kind (default: hardware.topology)",
    )
    parser.add_argument(
        "--num-slices", type=int, metavar="K", help=f"{when}slices joined over DCN (default: hardware.num_slices)"
    )


def check_target_arguments(args: argparse.Namespace) -> None:
    """--topology and --num-slices, checked with their own names before anything is compiled."""
    if args.topology is not None:
        try:
            parse_topology(args.topology)
        except ConfigError as error:
            raise UserError(str(error).replace("hardware.topology=", "--topology ", 1)) from None
    if args.num_slices is not None and args.num_slices < 1:
        raise UserError(f"--num-slices {args.num_slices}: expected a positive number of slices")


def run(args: argparse.Namespace) -> int:
    check_target_arguments(args)
    stages = compile_stages(experiment_from_args(args), topology=args.topology, num_slices=args.num_slices)
    if args.json:
        print(json.dumps({**stages[-1].as_dict(), "stages": [r.as_dict() for r in stages]}, indent=2))
    else:
        print("\n\n".join(format_compile_report(r) for r in stages))
        if len(stages) > 1:
            failing = [str(r.batch_size) for r in stages if not r.fits]
            print(
                f"\nevery stage of the batch ramp fits ({', '.join(str(r.batch_size) for r in stages)})"
                if not failing
                else f"\nthe stage(s) with batch {', '.join(failing)} do NOT fit"
            )
    return 0 if all(r.fits for r in stages) else EXIT_DOES_NOT_FIT


def format_compile_report(report: CompileReport) -> str:
    """The report as a short table (what `meshtrain compile` prints without --json)."""
    r = report.as_dict()
    mesh = format_mesh(r["mesh"])
    slices = f" x {r['num_slices']} slices" if r["num_slices"] > 1 else ""
    cores = f", {r['devices_per_chip']} devices each" if r["devices_per_chip"] > 1 else ""
    lines = [
        f"{r['experiment']}: train step on {r['topology']}{slices} = {r['num_chips']} {r['device_kind']} "
        f"chips ({r['hardware_kind']}{cores}), mesh {mesh}",
        f"batch {r['batch_size']} x {r['seq_len']} tokens in {r['microbatches']} microbatch(es), "
        f"{r['compute_dtype']}; lowered in {r['lower_seconds']:.1f} s, compiled in {r['compile_seconds']:.1f} s",
        "",
    ]
    hbm = r["hbm_bytes_per_chip"]
    if r["error"]:
        lines += [f"does NOT fit in {format_bytes(hbm)} of HBM per chip; XLA says:", r["error"], "", "per chip"]
    else:
        share = f" = {r['peak_bytes_per_chip'] / hbm:.0%} of {format_bytes(hbm)} HBM" if hbm else ""
        lines += [
            "per chip",
            f"  arguments        {format_bytes(r['argument_bytes_per_chip']):>11}",
            f"  outputs          {format_bytes(r['output_bytes_per_chip']):>11}",
            f"  donated (alias)  {format_bytes(r['alias_bytes_per_chip']):>11}",
            f"  temporaries      {format_bytes(r['temp_bytes_per_chip']):>11}",
            f"  generated code   {format_bytes(r['generated_code_bytes_per_chip']):>11}",
            f"  peak             {format_bytes(r['peak_bytes_per_chip']):>11}{share}: "
            + ("fits" if r["fits"] else "does NOT fit"),
        ]
    lines.append(f"  FLOPs per step   {r['flops_per_step_per_chip']:11.4g} (matmuls; every layer and microbatch)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
