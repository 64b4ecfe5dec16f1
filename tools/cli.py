"""The `meshtrain` console script: one entry point, one subcommand per job.

Each subcommand is a module of meshtrain.tools with `build_parser` and `run`; only the one asked
for is imported (`importlib`), so `meshtrain cost` never loads torch and `meshtrain --help` is
instant. This is a dispatch table, not a way around an import cycle: no module imports this one.
"""

from __future__ import annotations

import argparse
import glob
import importlib
import os
import sys

from meshtrain.tools.args import parse_args, run_with_user_errors

_GOOGLE_PCI_VENDOR = "0x1ae0"  # TPU chips on a TPU VM's PCI bus

SUBCOMMANDS = {
    "train": "train an experiment (default: configs/experiment/default.yaml)",
    "tokenizer": "train a sentencepiece tokenizer on an experiment's data (its mixture's sources)",
    "launch": "write a TPU VM, JobSet or SLURM recipe that runs an experiment on many hosts",
    "compile": "compile an experiment's train step for a TPU topology here; does it fit in HBM?",
    "cost": "estimate an experiment's FLOPs, time, chip-hours, dollars and memory per chip before launch",
    "plan": "predict step time and MFU of every layout and find the cheapest that fits and meets a deadline",
    "convert": "convert weights between Hugging Face and meshtrain, dtypes and meshes; --verify",
    "sample": "greedy text from a run or converted checkpoint, with a KV cache",
    "data": "what a run's step trained on: `data show RUN --step N` (sources, documents, text)",
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshtrain", description=__doc__.split("\n\n")[0], usage="meshtrain COMMAND [ARGS ...]"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in SUBCOMMANDS.items():
        commands.add_parser(name, help=help_text, add_help=False)
    return parser


def quiet_libtpu_without_tpus() -> None:
    """libtpu (installed by the test and tpu extras, for `meshtrain compile`) is started by JAX
    on every machine and, where there is no TPU, prints five lines of warnings and an
    INVALID_ARGUMENT error about the TPU VM metadata it cannot find. On a host with no TPU chip on
    its PCI bus, it is given the single-host answers it asks for, which it never uses there (no
    TPU backend starts without chips) and which change no compile for a named topology. A TPU VM,
    or a user's own setting, is left alone."""
    for vendor in glob.glob("/sys/bus/pci/devices/*/vendor"):
        try:
            with open(vendor) as f:
                if f.read().strip() == _GOOGLE_PCI_VENDOR:
                    return
        except OSError:
            continue
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")


def main(argv: list[str] | None = None) -> int:
    quiet_libtpu_without_tpus()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        _top_level_parser().parse_args(argv[:1] or ["--help"])  # prints the commands, exits
    name, rest = argv[0], argv[1:]
    module = importlib.import_module(f"meshtrain.tools.{name}")
    parser = module.build_parser(
        argparse.ArgumentParser(
            prog=f"meshtrain {name}", description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
    )
    return run_with_user_errors(module.run, parse_args(parser, rest))


if __name__ == "__main__":
    sys.exit(main())
