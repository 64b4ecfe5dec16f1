"""`meshtrain launch` (also `python -m meshtrain.tools launch`): write the script or manifest that runs
an experiment on its hardware, one `meshtrain train` process per host.

  meshtrain launch palm-540b-v4-6144 --recipe tpu-vm              # TPU VMs over gcloud ssh
  meshtrain launch palm-540b-v4-6144 --recipe jobset --out palm.yaml   # GKE JobSet (TPU or GPU)
  meshtrain launch default hardware.kind=h100 hardware.chips=64 train.batch_size=64 --recipe slurm   # sbatch, 8 nodes

Before anything is written, the job is checked: a batch that does not divide over its devices, or a
step that does not fit in a chip's memory, is refused in one line naming the fix.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from meshtrain.tools.args import (
    add_experiment_arguments,
    command_main,
    experiment_from_args,
    split_experiment_and_overrides,
)
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.launch.preflight import check_job
from meshtrain.trainer.launch.render import RECIPES, launch_shape, render, train_argv


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="meshtrain launch", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_experiment_arguments(parser)
    parser.add_argument(
        "--recipe",
        required=True,
        choices=sorted(RECIPES),
        help="tpu-vm: a bash script over gcloud ssh; jobset: a Kubernetes JobSet (GKE); "
        "slurm: an sbatch script for GPU nodes",
    )
    parser.add_argument("--out", metavar="FILE", help="write the recipe here (default: standard output)")
    parser.add_argument("--image", default="IMAGE", help="jobset: the container image holding meshtrain")
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="the coordinator's port for GPU recipes (jobset default 8482; slurm default "
        "derived from the job id, as jax does)",
    )
    return parser


def run(args: argparse.Namespace) -> int:
    cfg = experiment_from_args(args)
    shape = launch_shape(cfg)
    check_job(cfg, shape.num_chips, shape.num_processes, shape.spec)
    experiment, overrides = split_experiment_and_overrides(args.args)
    argv = train_argv(experiment, overrides, args.gin_file, args.gin_param)
    shown = shlex.join(["meshtrain", "launch", *args.args, "--recipe", args.recipe])
    text = render(cfg, args.recipe, argv, image=args.image, port=args.port, render_command=shown)
    if args.out:
        out = Path(args.out)
        try:
            out.write_text(text)
        except OSError as e:
            raise UserError(f"--out {out}: cannot write: {e.strerror}") from None
        if args.recipe != "jobset":
            out.chmod(out.stat().st_mode | 0o111)
        print(f"{out}: {args.recipe} recipe for {cfg.name}, {shape.num_processes} processes", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
