"""recoveries.json: the rewinds a run made (trainer/run/recovery.py), for later starts and the report.

A list of objects, appended atomically by process 0: the reason, the first bad step and the step it
was seen at, the step restored, the batch range skipped [start, end), and what it cost (steps to
redo, their FLOPs, and dollars where the hardware has a price).
"""

from __future__ import annotations

import datetime
import json

from etils import epath

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path

RECOVERIES_FILE = "recoveries.json"


def load_recoveries(run_dir: epath.Path) -> list[dict]:
    """Every recovery the run has made ([] when it made none)."""
    path = as_path(run_dir) / RECOVERIES_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text())
    except ValueError as error:
        raise UserError(f"{path} is not valid JSON ({error}): restore it or remove it to forget the skips") from None
    return records if isinstance(records, list) else []


def record_recovery(run_dir: epath.Path, recoveries: list[dict], recovery: dict) -> list[dict]:
    """Appends `recovery` to recoveries.json (atomically) and returns the new list."""
    recovery = {"at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), **recovery}
    updated = [*recoveries, recovery]
    write_atomic(as_path(run_dir) / RECOVERIES_FILE, json.dumps(updated, indent=1, allow_nan=False) + "\n")
    return updated


def describe(recovery: dict) -> str:
    """One line for the console and the report."""
    start, end = recovery["skipped_batches"]
    cost = f", ${recovery['cost_usd']:,.2f}" if recovery.get("cost_usd") is not None else ""
    return (
        f"{recovery['reason']} from step {recovery['first_bad_step']} (seen at step {recovery['detected_at_step']}): "
        f"rewound to step {recovery['restored_step']}, skipping batches {start}..{end - 1} "
        f"({recovery['redone_steps']} steps to redo, {recovery['redone_flops']:.3g} FLOPs{cost})"
    )
