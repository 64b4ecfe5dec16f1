"""`meshtrain convert SRC DST` (also `python -m meshtrain.tools convert`): move weights between
Hugging Face and meshtrain, and between dtypes and meshes, and prove the result computes the same.

  Hugging Face -> meshtrain   a local LlamaForCausalLM or GPTNeoXForCausalLM directory (safetensors,
                              single or sharded) -> config.yaml + Orbax checkpoint; continue with
                              `meshtrain train DST/config.yaml [key=value ...]`
  meshtrain -> Hugging Face   a run (its newest step, or --step) -> safetensors + config.json
  meshtrain -> meshtrain      --to meshtrain: --dtype, --params-only, mesh.*=... overrides

--verify runs source and result on the same tokens and reports the largest logit difference and
the KL divergence; it fails the conversion (writing nothing) when they differ by more than the
tolerance. Output is staged beside DST and renamed into place only when complete.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

from meshtrain.tools.args import command_main, quiet_libraries
from meshtrain.trainer.convert.run import Conversion
from meshtrain.trainer.storage.paths import absolute

DTYPES = ("float32", "bfloat16", "float16")


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="meshtrain convert", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "source",
        metavar="SRC",
        help="a Hugging Face model directory, or a meshtrain run, convert output or step directory",
    )
    parser.add_argument("destination", metavar="DST", help="the directory to create")
    parser.add_argument(
        "args",
        nargs="*",
        metavar="key=value",
        help="meshtrain -> meshtrain only: config overrides for the result, e.g. mesh.ici_tensor=2",
    )
    parser.add_argument(
        "--to", choices=("meshtrain", "hf"), help="output format (default: the other one: Hugging Face <-> meshtrain)"
    )
    parser.add_argument("--dtype", choices=DTYPES, help="cast parameters to this dtype (default: keep)")
    parser.add_argument(
        "--params-only",
        action="store_true",
        help="meshtrain -> meshtrain: keep parameters, drop optimizer state and data position",
    )
    parser.add_argument(
        "--architecture",
        help="meshtrain -> Hugging Face: LlamaForCausalLM or GPTNeoXForCausalLM (default: the one that fits)",
    )
    parser.add_argument("--step", type=int, help="the checkpoint step of a meshtrain source (default: newest)")
    parser.add_argument("--verify", action="store_true", help="compare source and result logits")
    parser.add_argument(
        "--tolerance",
        type=float,
        help="largest allowed |logit difference| for --verify (default: 1e-4 x the largest "
        "|logit| when no precision is lost; report only after a narrowing cast)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing DST (once the new one is complete)"
    )
    parser.add_argument(
        "--allow-pickle",
        action="store_true",
        help="read pickled .bin/.pt weights (they can run code when loaded: trusted sources only)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    source, destination = absolute(args.source, "SRC"), absolute(args.destination, "DST")
    started = time.perf_counter()
    conversion = Conversion(
        source,
        destination,
        to=args.to,
        dtype=args.dtype,
        params_only=args.params_only,
        architecture=args.architecture,
        step=args.step,
        overrides=args.args,
        allow_pickle=args.allow_pickle,
        overwrite=args.overwrite,
        progress=not (args.no_progress or args.json),
    )
    summary = conversion.run(verify=args.verify, tolerance=args.tolerance)
    summary["seconds"] = round(time.perf_counter() - started, 2)
    summary["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def format_summary(s: dict) -> str:
    lines = [
        f"converted {s['source']} ({s['source_format']}) -> {s['destination']} ({s['destination_format']})",
        f"  {s['parameters'] / 1e6:,.1f}M parameters in {s['tensors']} meshtrain arrays, {s['source_dtype']} -> {s['dtype']}, "
        f"{s['bytes_written'] / 1e6:,.1f} MB written in {s['seconds']:.1f} s, "
        f"peak host memory {s['peak_rss_bytes'] / 1e6:,.0f} MB",
    ]
    if "max_abs_logit_diff" in s:
        verdict = "report only: a narrowing cast" if s["tolerance"] is None else f"tolerance {s['tolerance']:.2e}: ok"
        lines.append(
            f"  verify: max |logit difference| {s['max_abs_logit_diff']:.3e}, KL divergence "
            f"{s['kl_divergence']:.3e} over {s['tokens_compared']} tokens ({verdict})"
        )
    if s.get("next"):
        lines.append(f"  next: {s['next']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
