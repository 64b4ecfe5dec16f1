"""Where logged metrics go: metrics.jsonl (one object per logged step) and TensorBoard events; and
reading metrics.jsonl back (the run report and the goodput record read the whole run's history)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tensorboardX import SummaryWriter

from meshtrain.trainer.errors import UserError


class MetricsLog:
    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / "metrics.jsonl"
        self._jsonl = open(self.path, "a", buffering=1)
        self._tensorboard = SummaryWriter(str(Path(run_dir) / "tensorboard"))

    def write(self, step: int, metrics: dict) -> None:
        record = without_nonfinite({"step": step, **metrics})
        try:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as error:  # a full disk, a run directory that went away
            raise UserError(
                f"cannot append to {self.path}: {error}; the run stops (the same command resumes)"
            ) from None
        for name, value in record.items():
            if isinstance(value, (int, float)) and name != "step":
                self._tensorboard.add_scalar(name, value, step)

    def close(self) -> None:
        self._jsonl.close()
        self._tensorboard.close()


def without_nonfinite(record: dict) -> dict:
    """`record` with NaN and infinities written as null, and the keys that held them listed under
    "nonfinite" (JSON has no NaN: a bare NaN token makes the file unreadable to strict parsers)."""
    bad = [k for k, v in record.items() if isinstance(v, float) and not math.isfinite(v)]
    if not bad:
        return record
    return {**{k: (None if k in bad else v) for k, v in record.items()}, "nonfinite": bad}


def finite_or_null(value):
    """`value` (nested dicts and lists) with every non-finite float replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def read_metrics(run_dir: Path) -> list[dict]:
    """Every record of run_dir/metrics.jsonl in file order ([] when there is none); a line cut short
    by a killed process is skipped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), int):
            records.append(record)
    return records


def latest_by_step(records: list[dict], key: str) -> dict[int, dict]:
    """{step: record} over the records holding `key`, in step order; where a resumed run logged a step
    again, its later record wins (it is the one the run's state descends from)."""
    latest = {}
    for record in records:
        if key in record:
            latest[record["step"]] = record
    return dict(sorted(latest.items()))
