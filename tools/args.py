"""What every meshtrain command line shares: argument shapes, the experiment they name, and how user
errors are shown."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable, Sequence

import tensorflow_datasets as tfds

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.resolve import override_layer
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.errors import PEER_FAILURE_EXIT, PeerFailure, UserError


def add_experiment_arguments(parser: argparse.ArgumentParser) -> None:
    """EXPERIMENT [key=value ...] plus gin's --gin_file/--gin_param, as train, eval and cost take them."""
    parser.add_argument(
        "args",
        nargs="*",
        metavar="[EXPERIMENT] [key=value ...]",
        help="an experiment YAML (path, or name in configs/experiment/; default: default) "
        "followed by dotted overrides such as train.steps=100 model=palm-8b",
    )
    parser.add_argument("--gin_file", action="append", default=[], help="a gin file binding the config dataclasses")
    parser.add_argument("--gin_param", action="append", default=[], help="a gin binding, e.g. 'TrainConfig.steps=10'")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like parse_args, but `key=value` overrides may also come after flags (`--no-progress x=1`),
    which argparse alone would reject once its positional list has been closed by a flag."""
    args, extra = parser.parse_known_args(argv)
    unknown = [arg for arg in extra if arg.startswith("-") or "=" not in arg]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.args = [*getattr(args, "args", []), *extra]
    return args


def split_experiment_and_overrides(args: Sequence[str]) -> tuple[str | None, list[str]]:
    """The experiment is the first argument without '='; everything else is an override."""
    if args and "=" not in args[0]:
        return args[0], list(args[1:])
    return None, list(args)


def experiment_from_args(args: argparse.Namespace) -> ExperimentConfig:
    """The resolved experiment of EXPERIMENT [key=value ...] --gin_file/--gin_param."""
    experiment, overrides = split_experiment_and_overrides(args.args)
    return load_experiment(experiment, overrides, gin_files=args.gin_file, gin_params=args.gin_param)


def hardware_fields_overridden(args: argparse.Namespace) -> frozenset[str]:
    """The hardware.* fields the command line's key=value overrides set ("hardware.num_slices=8" ->
    num_slices): --hardware moves an experiment to another kind and drops the chips, topology and
    slices the experiment described, but not the ones the user has just given."""
    _, overrides = split_experiment_and_overrides(args.args)
    return frozenset(field for text in overrides for field in override_layer(text)[1].get("hardware", {}))


def quiet_libraries() -> None:
    """TFDS and Orbax report routine file operations (even as warnings) through absl, and gcsfs
    warns at every bucket it cannot ask for its layout (a permission most service accounts lack)
    before falling back to plain GCS; a user wants our progress bar and our own warnings, which go
    through the `meshtrain` logger. Real errors still reach the user as exceptions."""
    logging.getLogger("absl").setLevel(logging.ERROR)
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    logging.getLogger("meshtrain").setLevel(logging.WARNING)
    tfds.disable_progress_bar()  # Preparing our corpora takes a second; its bars would bury ours.


def run_with_user_errors(main: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Runs `main`; a UserError becomes one line on stderr and exit code 2 (a traceback with --debug)."""
    try:
        return main(args)
    except UserError as error:
        if getattr(args, "debug", False):
            raise
        print(f"meshtrain: error: {error}", file=sys.stderr)
        if isinstance(error, PeerFailure):  # no orderly shutdown with a lost peer (see PeerFailure)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(PEER_FAILURE_EXIT)
        return 2
    except BrokenPipeError:  # `meshtrain cost --json | head`: the reader left; nothing to report.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def command_main(
    build_parser: Callable[[], argparse.ArgumentParser],
    run: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None,
) -> int:
    """The body of every `python -m <module>` entry point: parse, run, show user errors."""
    return run_with_user_errors(run, parse_args(build_parser(), argv))


def number_type(what: str, *, positive: bool = True):
    """An argparse type: a finite number (300e9 and 1,000 accepted), with a message naming `what`."""

    def parse(text: str) -> float:
        try:
            value = float(text.replace(",", "").replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number ({what})") from None
        if not math.isfinite(value) or value < 0 or (positive and value == 0):
            raise argparse.ArgumentTypeError(
                f"{text!r}: expected a {'positive' if positive else 'non-negative'} finite number ({what})"
            )
        return value

    return parse


def count_type(what: str):
    """An argparse type: a positive whole number of `what` (1,024 accepted)."""

    def parse(text: str) -> int:
        try:
            value = int(text.replace(",", "").replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of {what}") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{text}: expected a positive number of {what}")
        return value

    return parse
