"""Goodput: where a run's wall time went, kept across restarts in the run directory's goodput.json.

The parts add up to the wall time (seconds from each process's start, summed over the processes
that ran the run one after another):

  productive     training steps, less the parts below that happen inside them
  compilation    the first step of each process traces, compiles and runs the train step: its
                 excess over a typical step (the mean step of the next logged interval) is counted
                 as compilation. Chosen over timing jit(...).lower().compile() because it needs no
                 second path to the step, counts everything the first call costs (tracing, lowering,
                 XLA, the first run's allocations) and adds no work. Recompiles later in a process
                 (the first step at each new batch size of a batch ramp) stay in productive time; a
                 process that runs a single step counts all of it as compilation.
  data_wait      time the loop was blocked in prefetcher.next() waiting for a batch. Dispatch is
                 asynchronous, so the device may still have been finishing the previous step: an
                 upper bound on the time the device was starved.
  evaluation     eval passes (the first one includes compiling the eval step)
  checkpointing  restoring at start, saving (the blocking part of an asynchronous save), and waiting
                 for the last save to reach disk before the report is written
  restart_loss   steps computed twice: a process that resumes from a checkpoint older than the last
                 step an earlier process logged redoes the steps between. Their time is estimated
                 from that process's logged step_time_s, and moved out of its productive time. A
                 rewind after a loss spike (trainer/run/recovery.py) counts its redone steps here too.
  startup        process start to the first step: distributed set-up, dataset and tokenizer,
                 sharded state, restoring excepted (that is checkpointing)
  other          the rest: logging, the progress bar, writing this record

Each process's segment also records what JAX's persistent compilation cache saved it
(trainer/step/compilation_cache.py): executables read back and the compile seconds that spared.

goodput.json is rewritten (atomically) at every logged step, after every checkpoint save and at the
end, so a process killed without warning leaves its record as of its last log: what it did after
that is unknown to later processes and not counted, and if it logged steps past its last checkpoint
the next process counts them as restart loss.
"""

from __future__ import annotations

import datetime
import json
import statistics
import time

from etils import epath

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.step.compilation_cache import cache_totals
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path
from meshtrain.trainer.tracking.metrics_log import latest_by_step

PARTS = ("productive", "compilation", "data_wait", "evaluation", "checkpointing", "restart_loss", "startup", "other")
GOODPUT_FILE = "goodput.json"
_VERSION = 1


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def load_record(run_dir: epath.Path) -> dict | None:
    """The cumulative record an earlier process left in run_dir, None when there is none (or it is
    unreadable: then the earlier time is unknown, as for a run from before goodput was kept)."""
    try:
        record = json.loads((as_path(run_dir) / GOODPUT_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("version") != _VERSION:
        return None
    return record


def redone_step_times(records: list[dict], start: int, done: int, first_steps: set[int]) -> list[float]:
    """Estimated seconds of each step in start..done-1 (computed before, to be computed again), from
    the logged step_time_s of the interval covering it. A line logged at a process's first step
    carries its compilation: such steps take the median of the other intervals instead."""
    lines = latest_by_step(records, "step_time_s")
    if not lines or done <= start:
        return []
    steps = list(lines)
    typical = [r["step_time_s"] for s, r in lines.items() if s not in first_steps]
    typical_time = statistics.median(typical) if typical else None
    times = []
    for step in range(start, done):
        covering = next((s for s in steps if s >= step), steps[-1])
        seconds = lines[covering]["step_time_s"]
        if covering in first_steps and typical_time is not None:
            seconds = typical_time
        times.append(float(seconds))
    return times


class Goodput:
    """The wall-time split of this process, on top of what earlier processes recorded.

    add(part, seconds) as parts are measured; begin(start_step, records) when the loop starts (counts
    startup and the restart loss); snapshot()/save() give the cumulative record.
    """

    def __init__(self, run_dir: epath.Path, started_at: float, chips: int, hardware: str, *, persist: bool):
        self.run_dir = as_path(run_dir)
        self.started_at = started_at
        self.chips = chips
        self.hardware = hardware
        self.persist = persist
        previous = load_record(run_dir) if persist else None
        self.previous = previous or {
            "wall_s": 0.0,
            "chip_seconds": 0.0,
            "parts_s": dict.fromkeys(PARTS, 0.0),
            "steps_done": 0,
            "steps_redone": 0,
            "segments": [],
        }
        self.had_record = previous is not None
        self.parts = dict.fromkeys(PARTS, 0.0)  # this process's; "other" is what the rest leaves
        self.start_step = 0
        self.started_iso = _now_iso()
        self._cache_at_start = cache_totals()  # a process may run several runs (tests, notebooks)

    def add(self, part: str, seconds: float) -> None:
        self.parts[part] += seconds

    def first_steps(self) -> set[int]:
        """Steps that were a process's first (their logged interval holds its compilation)."""
        return {segment["start_step"] for segment in self.previous["segments"]} | {self.start_step}

    def begin(self, start_step: int, records: list[dict]) -> None:
        """The loop starts at `start_step`: what came before it is startup (less restoring, already
        counted as checkpointing), and steps an earlier process ran past `start_step` are redone."""
        self.start_step = start_step
        elapsed = time.perf_counter() - self.started_at
        self.parts["startup"] += elapsed - sum(v for k, v in self.parts.items() if k != "startup")
        logged = latest_by_step(records, "loss")
        done = max(self.previous["steps_done"], (max(logged) + 1) if logged else 0)
        firsts = {segment["start_step"] for segment in self.previous["segments"]}
        times = redone_step_times(records, start_step, done, firsts)
        if not times:
            return
        lost = sum(times)
        previous = self.previous
        previous["steps_redone"] = previous.get("steps_redone", 0) + len(times)
        parts = previous["parts_s"]
        if self.had_record:  # that time is in the earlier processes' productive time: move it
            lost = min(lost, parts["productive"])
            parts["productive"] -= lost
        else:  # nothing recorded it: it adds to the wall time as well
            previous["wall_s"] += lost
            previous["chip_seconds"] += lost * self.chips
        parts["restart_loss"] += lost

    def redo(self, steps: int, step_seconds: float) -> None:
        """An in-process rewind: `steps` steps already run (at about `step_seconds` each) will run again."""
        lost = min(steps * step_seconds, self.parts["productive"])
        self.parts["productive"] -= lost
        self.parts["restart_loss"] += lost
        self.previous["steps_redone"] = self.previous.get("steps_redone", 0) + steps

    def snapshot(self, steps_done: int) -> dict:
        """The cumulative record now: wall time, chip-seconds, parts (summing to the wall time),
        steps done and redone, and one segment per process."""
        elapsed = time.perf_counter() - self.started_at
        previous = self.previous
        parts = {part: previous["parts_s"].get(part, 0.0) + self.parts[part] for part in PARTS}
        parts["other"] += elapsed - sum(self.parts.values())
        wall = previous["wall_s"] + elapsed
        cache = cache_totals()
        segment = {
            "start_step": self.start_step,
            "end_step": steps_done,
            "wall_s": elapsed,
            "chips": self.chips,
            "hardware": self.hardware,
            "started_at": self.started_iso,
            "compile_cache_hits": cache["hits"] - self._cache_at_start["hits"],
            "compile_time_saved_s": cache["saved_s"] - self._cache_at_start["saved_s"],
        }
        percent = lambda seconds: 100.0 * seconds / wall if wall > 0 else 0.0
        return {
            "version": _VERSION,
            "wall_s": wall,
            "chip_seconds": previous["chip_seconds"] + elapsed * self.chips,
            "parts_s": parts,
            "parts_pct": {part: percent(seconds) for part, seconds in parts.items()},
            "goodput_pct": percent(parts["productive"]),
            "steps_done": steps_done,
            "steps_redone": previous.get("steps_redone", 0),
            "segments": [*previous["segments"], segment],
            "updated_at": _now_iso(),
        }

    def save(self, steps_done: int) -> dict:
        record = self.snapshot(steps_done)
        if self.persist:
            path = self.run_dir / GOODPUT_FILE
            try:
                write_atomic(path, json.dumps(record, indent=1) + "\n")
            except OSError as error:  # a full disk, a run directory that went away
                raise UserError(f"cannot write {path}: {error}; the run stops (the same command resumes)") from None
        return record
