"""The `meshtrain` console script: one entry point, one subcommand per job."""

from __future__ import annotations

import argparse
import sys

from tools import compile as compile_step
from tools import convert_checkpoint, cost, sample
from tools import tokenizer
from tools.launch import render as launch
from trainer import train
from trainer.cli import parse_args, run_with_user_errors

SUBCOMMANDS = {
    "train": (train, "train an experiment (default: configs/experiment/default.yaml)"),
    "tokenizer": (tokenizer, "train a sentencepiece tokenizer on an experiment's dataset"),
    "launch": (launch, "write a TPU VM, JobSet or SLURM recipe that runs an experiment on many hosts"),
    "compile": (compile_step, "compile an experiment's train step for a TPU topology here; does it fit in HBM?"),
    "cost": (cost, "estimate an experiment's FLOPs, time, chip-hours, dollars and memory per chip before launch"),
    "convert": (convert_checkpoint, "convert weights between Hugging Face and meshtrain, dtypes and meshes; --verify"),
    "sample": (sample, "greedy text from a run or converted checkpoint, with a KV cache"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="meshtrain", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in SUBCOMMANDS.items():
        module.build_parser(commands.add_parser(name, help=help_text, description=module.__doc__))
    args = parse_args(parser, argv)
    return run_with_user_errors(SUBCOMMANDS[args.command][0].run, args)


if __name__ == "__main__":
    sys.exit(main())
