"""`meshtrain data show RUN --step N` (also `python -m meshtrain.tools data`): what a step trained on.

Prints each row of the step's global batch: its source, and for each of its segments (documents,
or seq_len chunks of a long one) the document's index in its source's train split and its decoded
text. Rebuilt from the run's data ledger (trainer/run/provenance.py): no model runs and the dataset
is not read through. `--step` takes one step, `A-B` (inclusive) or `A:B` (B excluded). A batch the
run skipped past (train.skip_batches, or a rewind after a loss spike) is named above the step that
follows it.
"""

from __future__ import annotations

import argparse
import json
import sys

from meshtrain.tools.args import command_main, quiet_libraries
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.provenance import StepBatch, step_batches

_SHOWN_CHARS = 160  # of each segment's text, unless --full


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(prog="meshtrain data", description=__doc__)
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    show = actions.add_parser("show", help="the global batch of a step (or steps): sources, documents, text")
    show.add_argument("run_dir", metavar="RUN", help="a run directory")
    show.add_argument("--step", required=True, help="a step, A-B (inclusive) or A:B (B excluded)")
    show.add_argument("--rows", type=int, help="show the first K rows of each batch (default: all)")
    show.add_argument("--full", action="store_true", help="print whole segment texts, not their first characters")
    show.add_argument("--json", action="store_true", help="one JSON object per step, with token ids")
    show.add_argument("--debug", action="store_true", help="show tracebacks for user errors")
    return parser


def parse_steps(text: str) -> range:
    """'12' -> range(12, 13); '10-12' -> range(10, 13); '10:12' -> range(10, 12)."""
    try:
        if ":" in text:
            start, stop = (int(part) for part in text.split(":"))
        elif "-" in text.strip("-"):
            start, last = (int(part) for part in text.split("-"))
            stop = last + 1
        else:
            start = int(text)
            stop = start + 1
    except ValueError:
        raise UserError(f"--step {text!r}: expected a step (12), a range A-B (10-12) or A:B (10:13)") from None
    if start < 0 or stop <= start:
        raise UserError(f"--step {text!r}: expected steps >= 0 and a range that is not empty")
    return range(start, stop)


def _as_json(batch: StepBatch) -> dict:
    return {
        "step": batch.step,
        "batch": batch.batch,
        "batch_size": batch.batch_size,
        "skipped_before": list(batch.skipped_before) if batch.skipped_before else None,
        "rows": [
            {
                "row": row.index,
                "source": row.source,
                "segments": [{"document": s.document, "tokens": s.tokens, "text": s.text} for s in row.segments],
            }
            for row in batch.rows
        ],
    }


def _print_text(batch: StepBatch, full: bool) -> None:
    if batch.skipped_before:
        start, end = batch.skipped_before
        print(f"(batches {start}..{end - 1} were skipped before this one: never trained on)")
    shown = "" if len(batch.rows) == batch.batch_size else f", first {len(batch.rows)} rows shown"
    print(f"step {batch.step}: batch {batch.batch}, {batch.batch_size} rows{shown}")
    for row in batch.rows:
        if row.source is None:
            print(f"  row {row.index}: empty")
            continue
        print(f"  row {row.index}: {row.source}, {len(row.segments)} segment(s)")
        for segment in row.segments:
            text = segment.text if full or len(segment.text) <= _SHOWN_CHARS else segment.text[:_SHOWN_CHARS] + "..."
            print(f"    document {segment.document}, {len(segment.tokens) - 1} tokens: {text!r}")


def run(args: argparse.Namespace) -> int:
    quiet_libraries()
    if getattr(args, "args", None):
        raise UserError(f"meshtrain data takes no key=value overrides (got {' '.join(args.args)})")
    if args.rows is not None and args.rows < 1:
        raise UserError(f"--rows={args.rows} must be at least 1")
    for batch in step_batches(args.run_dir, parse_steps(args.step), args.rows):
        if args.json:
            print(json.dumps(_as_json(batch)))
        else:
            _print_text(batch, args.full)
    return 0


def main(argv: list[str] | None = None) -> int:
    return command_main(build_parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
