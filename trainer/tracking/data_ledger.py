"""The data ledger: what every logged step trained on, kept so that any step's batch can be rebuilt.

The data pipeline's state is a few integers per reader (trainer/data/pipeline.py), so at each
logged step each feeder records the state its stream had *before* reading that step's batch, the
batch's global number and the step. `meshtrain data show` rebuilds a logged step's batch from
that record, and any other step's from the logged step before it (at most train.log_every - 1
batches of reading): no model and no pass over the dataset.

One file per feeder, `data_ledger/feeder-IIIII-of-FFFFF.jsonl`, written by the feeder's first
process: no collective, and a run that resumes on another process count starts another set. A
step trained twice (a rewind redid it) has a record from each time; the newest complete set
(one record from each feeder of a set) is what trained last.
"""

from __future__ import annotations

import json
import re
import time
from typing import Any

from etils import epath

from meshtrain.trainer.data import merge_states
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.append_log import AppendLog, read_log
from meshtrain.trainer.storage.paths import as_path

LEDGER_DIR = "data_ledger"
_FILE = re.compile(r"^feeder-(\d{5})-of-(\d{5})\.jsonl$")


def ledger_file(run_dir, feeder_index: int, feeder_count: int) -> epath.Path:
    return as_path(run_dir) / LEDGER_DIR / f"feeder-{feeder_index:05d}-of-{feeder_count:05d}.jsonl"


class DataLedger:
    """Appends this feeder's record of a logged step; flushed at once (logged steps are rare)."""

    def __init__(self, run_dir, feeder_index: int, feeder_count: int):
        path = ledger_file(run_dir, feeder_index, feeder_count)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._log = AppendLog(path)

    def record(self, step: int, batch: int, state: dict[str, Any]) -> None:
        """`state`: the stream's state before it read the batch numbered `batch`, trained by `step`."""
        line = {"step": step, "batch": batch, "time": time.time(), "state": state}
        try:
            self._log.write(json.dumps(line, separators=(",", ":")) + "\n")
            self._log.flush()
        except OSError as error:  # a full disk, a run directory that went away
            raise UserError(
                f"cannot append to {self._log.path}: {error}; the run stops (the same command resumes)"
            ) from None

    def close(self) -> None:
        self._log.close()


def read_ledger(run_dir) -> dict[int, dict[str, Any]]:
    """step -> {"step", "batch", "state"} (the global state, every feeder's merged) for each
    logged step, from the newest complete set of records of that step."""
    directory = as_path(run_dir) / LEDGER_DIR
    if not directory.is_dir():
        return {}
    groups: dict[tuple[int, int], dict[int, dict]] = {}  # (step, feeder count) -> feeder -> record
    for path in sorted(directory.iterdir()):
        match = _FILE.match(path.name)
        if not match:
            continue
        feeder, count = int(match[1]), int(match[2])
        for line in read_log(path).splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by a kill: the records before it stand
                continue
            earlier = groups.setdefault((record["step"], count), {}).get(feeder)
            if earlier is None or record["time"] >= earlier["time"]:
                groups[record["step"], count][feeder] = record
    out: dict[int, dict[str, Any]] = {}
    newest: dict[int, float] = {}
    for (step, count), records in groups.items():
        if len(records) != count:
            continue
        written = max(r["time"] for r in records.values())
        if written >= newest.get(step, -1.0):
            first = records[0]
            states = [records[i]["state"] for i in range(count)]
            out[step], newest[step] = {"step": step, "batch": first["batch"], "state": merge_states(states)}, written
    return dict(sorted(out.items()))
