"""Where logged metrics go: metrics.jsonl (one object per logged step) and TensorBoard events; and
reading metrics.jsonl back (the run report and the goodput record read the whole run's history).

Both are append-only logs (trainer/storage/append_log.py), so a run directory on an object store
holds them too: tensorboardX is given a writer for gs:// and s3:// that writes event files as
AppendLog parts (its own gs:// writer needs google-cloud-storage and re-uploads the whole file at
every flush).

tensorboardX imports torch whenever torch is installed (it accepts torch tensors), which costs
every process ~2 s at start (a third of a run's imports), for support meshtrain never uses: it
logs Python numbers. So, unless torch is already loaded, tensorboardX is imported with torch
marked absent, its documented fallback (torch is optional to it), and torch stays importable
afterwards for anyone else.
"""

from __future__ import annotations

import json
import math
import sys

from etils import epath

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.append_log import AppendLog, read_log
from meshtrain.trainer.storage.paths import URL_BACKENDS, as_path

_HIDE_TORCH = "torch" not in sys.modules
if _HIDE_TORCH:
    sys.modules["torch"] = None  # `import torch` raises ImportError while this entry is None
try:
    from tensorboardX import SummaryWriter, record_writer
finally:
    if _HIDE_TORCH:
        del sys.modules["torch"]


class _EventLogs:
    """tensorboardX's writer factory for object-store URLs: each event file is an AppendLog."""

    def open(self, path: str) -> AppendLog:
        return AppendLog(path, binary=True)

    def directory_check(self, path: str) -> None:
        """Nothing to make: an object store has no directories."""


for _scheme in URL_BACKENDS:
    record_writer.register_writer_factory(_scheme, _EventLogs())


class MetricsLog:
    """metrics.jsonl and TensorBoard, and Weights & Biases when `wandb` is given."""

    def __init__(self, run_dir: epath.Path, wandb=None):
        self.path = as_path(run_dir) / "metrics.jsonl"
        self._jsonl = AppendLog(self.path)
        self._tensorboard = SummaryWriter(str(as_path(run_dir) / "tensorboard"))
        self._wandb = wandb

    def write(self, step: int, metrics: dict) -> None:
        record = without_nonfinite({"step": step, **metrics})
        try:
            self._jsonl.write(json.dumps(record, allow_nan=False) + "\n")
            self._jsonl.flush()
        except OSError as error:  # a full disk, a run directory that went away
            raise UserError(
                f"cannot append to {self.path}: {error}; the run stops (the same command resumes)"
            ) from None
        for name, value in record.items():
            if isinstance(value, (int, float)) and name != "step":
                self._tensorboard.add_scalar(name, value, step)
        if self._wandb is not None:
            self._wandb.log(step, {k: v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        """After the report is written: W&B's run takes it with it."""
        self._jsonl.close()
        self._tensorboard.close()
        if self._wandb is not None:
            self._wandb.finish()


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


def read_metrics(run_dir: epath.Path) -> list[dict]:
    """Every record of run_dir/metrics.jsonl in file order ([] when there is none); a line cut short
    by a killed process is skipped."""
    records = []
    for line in read_log(as_path(run_dir) / "metrics.jsonl").splitlines():
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
