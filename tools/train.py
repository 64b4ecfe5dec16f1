"""`meshtrain train` (also `python -m meshtrain.tools train`): resolve an experiment and train it."""

from __future__ import annotations

import argparse
import sys

from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    experiment_from_args,
    quiet_libraries,
)
from meshtrain.trainer.run.train import train


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="meshtrain train", description=__doc__)
    add_experiment_arguments(parser)
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (metrics still logged)")
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = experiment_from_args(args)
    quiet_libraries()
    summary = train(cfg, progress=not args.no_progress)
    if summary.first_loss is not None:
        print(
            f"{summary.run_dir}: steps {summary.start_step}->{summary.end_step}, loss "
            f"{summary.first_loss:.4f} -> {summary.last_loss:.4f} "
            f"({summary.last_loss / summary.first_loss:.0%} of the first)"
            + (f", eval loss {summary.last_eval_loss:.4f}" if summary.last_eval_loss is not None else "")
            + (" [interrupted; run the same command to resume]" if summary.interrupted else "")
        )
    if summary.report:
        print(f"report: {summary.report}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
