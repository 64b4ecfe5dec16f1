"""The progress watchdog and the peer heartbeat: a hung or dead process ends the job in seconds, with
one line saying which process and at what step, instead of a C++ abort a minute later.

Two threads per process:
- the heartbeat publishes this process's step and a counter through jax.distributed's key-value
  store every second, and reads every peer's. A peer whose counter has not moved for
  `distributed.heartbeat_timeout_s` is dead or stopped; a store that cannot be reached for that
  long means the coordinator (process 0, which hosts it) is. Counters, not clocks, so hosts whose
  clocks disagree still agree on who is silent.
- the watchdog checks that the training loop finishes steps: no step within the limit means this
  process is stuck (in a collective with a peer that is alive but not progressing, say). The limit
  is `train.watchdog_s`, or, when 0, 20 steps' worth of the measured step time but at least a
  minute; compiling (before the first step), evaluating and checkpointing get allowances of their
  own (30 and 10 minutes, or the limit if larger).

When either fires, the process writes every thread's Python stack to run_dir/stacks/, prints the one
line, runs `on_failure` (the primary writes its report) for at most a few seconds, and exits with
code 4 (os._exit: the main thread may be blocked inside XLA, where nothing else can reach it).
Core dumps are switched off for multi-process runs (trainer/run/distributed.py), so even an abort
inside the runtime, which jax answers a lost coordinator with, leaves none: only its note and the
Python stacks (faulthandler) in run_dir/stacks/process-N-abort.txt.

faulthandler writes to an OS file, so for a run directory on an object store the stacks go to a
local folder first (printed in the line) and are then copied to run_dir/stacks/; the abort note,
written by the runtime's dying process, stays local.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import jax
from jax._src import distributed as jax_distributed  # the only handle jax gives to its key-value store

from meshtrain.trainer.errors import PEER_FAILURE_EXIT
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path, is_url

_COMPILE_ALLOWANCE_S = 1800.0
_SIDE_WORK_ALLOWANCE_S = 600.0
_MIN_LIMIT_S = 60.0
_STEPS_OF_SLACK = 20
_PERIOD_S = 1.0
_KEY = "meshtrain/heartbeat/"


def local_stacks_dir(run_dir) -> Path:
    """Where faulthandler writes: run_dir/stacks, or a local stand-in for a run on an object store."""
    if not is_url(run_dir):
        return Path(run_dir) / "stacks"
    return Path(tempfile.gettempdir()) / "meshtrain-stacks" / re.sub(r"[^\w.-]+", "_", str(run_dir))


def _kv_client():
    """jax.distributed's client, None for a single process."""
    if jax.process_count() == 1:
        return None
    return jax_distributed.global_state.client


class Watchdog:
    """Start it before the first step; call beat(step) after every step; wrap slow side work in
    allowance(); close() at the end."""

    def __init__(
        self,
        run_dir,
        *,
        limit_s: float,
        heartbeat_timeout_s: float,
        on_failure: Callable[[], None] | None = None,
        exit: Callable[[int], None] = os._exit,
    ):
        self.run_dir = as_path(run_dir)
        self.stacks_dir = local_stacks_dir(run_dir)
        self.fixed_limit = limit_s or None
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self.on_failure = on_failure
        self._exit = exit
        self.process, self.processes = jax.process_index(), jax.process_count()
        self.step = -1
        self._limit = self.fixed_limit or _MIN_LIMIT_S
        self._last_beat = time.monotonic()
        self._allowance: tuple[str, float] | None = ("compiling the first step", self._allow(_COMPILE_ALLOWANCE_S))
        self._peers: dict[int, tuple[int, int, float]] = {}  # process -> (counter, step, when it last moved)
        self._store_ok = time.monotonic()
        self._stop = threading.Event()
        self.fired: str | None = None
        self._client = _kv_client()
        self._threads = [threading.Thread(target=self._watch, name="meshtrain-watchdog", daemon=True)]
        if self._client is not None:
            self._record_aborts()
            self._threads.append(threading.Thread(target=self._publish, name="meshtrain-heartbeat", daemon=True))

    def _record_aborts(self) -> None:
        """An abort inside the runtime (it answers a lost coordinator with one, within a second, before
        any Python runs) still leaves a note and the Python stacks in run_dir/stacks/."""
        path = self.stacks_dir / f"process-{self.process}-abort.txt"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._abort_file = open(path, "w")
        except OSError:
            return
        self._abort_file.write(
            f"meshtrain: if this file holds stacks, process {self.process} was aborted by the runtime (a fatal "
            "signal): with a multi-process run, the coordinator (process 0) or a peer was lost\n"
        )
        self._abort_file.flush()
        faulthandler.enable(file=self._abort_file, all_threads=True)

    def _allow(self, seconds: float) -> float:
        return max(seconds, self.fixed_limit or 0.0)

    def start(self) -> Watchdog:
        for thread in self._threads:
            thread.start()
        return self

    def beat(self, step: int) -> None:
        """Step `step` is done (dispatched; the loop syncs at log steps, so a hang shows by then)."""
        self.step = step
        self._last_beat = time.monotonic()
        if self._allowance and self._allowance[0] == "compiling the first step":
            self._allowance = None

    def learn_step_time(self, seconds: float) -> None:
        if self.fixed_limit is None and seconds > 0:
            self._limit = max(_MIN_LIMIT_S, _STEPS_OF_SLACK * seconds)

    @contextlib.contextmanager
    def allowance(self, what: str, seconds: float = _SIDE_WORK_ALLOWANCE_S):
        """Side work (evaluation, a checkpoint) that may take longer than a step."""
        self._allowance = (what, self._allow(seconds))
        self._last_beat = time.monotonic()
        try:
            yield
        finally:
            self._allowance = None
            self._last_beat = time.monotonic()

    def close(self, *, failing: bool = False) -> None:
        """Stops the threads. On a clean end the abort note goes too; while a failure is on its way
        out (`failing`: a lost peer's collective error, say) it stays armed, since the runtime may
        still abort this process before it exits, and the note must then be there."""
        if getattr(self, "_abort_file", None) is not None and not failing:
            faulthandler.disable()
            self._abort_file.close()
            Path(self._abort_file.name).unlink(missing_ok=True)  # no abort happened: nothing to keep
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=2 * _PERIOD_S + 1)

    # -- the two threads ---------------------------------------------------------------------

    def _publish(self) -> None:
        counter = 0
        while not self._stop.wait(_PERIOD_S):
            counter += 1
            try:
                self._client.key_value_set(f"{_KEY}{self.process}", f"{counter} {self.step}", allow_overwrite=True)
                entries = self._client.key_value_dir_get(_KEY)
            except Exception:  # the store is unreachable: the watchdog counts how long for
                continue
            now = time.monotonic()
            self._store_ok = now
            for key, value in entries:
                peer = int(key.rsplit("/", 1)[-1])
                seen, step = (int(v) for v in value.split())
                previous = self._peers.get(peer)
                if previous is None or previous[0] != seen:
                    self._peers[peer] = (seen, step, now)

    def _watch(self) -> None:
        started = time.monotonic()
        while not self._stop.wait(_PERIOD_S):
            now = time.monotonic()
            problem = self._peer_problem(now, started) or self._progress_problem(now)
            if problem:
                self._fire(problem)
                return

    def _peer_problem(self, now: float, started: float) -> str | None:
        if self._client is None:
            return None
        limit = self.heartbeat_timeout_s
        if now - self._store_ok > limit and now - started > limit:
            return (
                f"process {self.process} (at step {self.step + 1}) cannot reach the coordinator, process 0, for "
                f"{now - self._store_ok:.0f} s (distributed.heartbeat_timeout_s={limit:g}): it died or hangs"
            )
        for peer, (_, step, moved) in sorted(self._peers.items()):
            if peer != self.process and now - moved > limit:
                return (
                    f"process {peer} stopped responding at step {step + 1} (no heartbeat for {now - moved:.0f} s, "
                    f"distributed.heartbeat_timeout_s={limit:g}): it died or hangs; process {self.process} was at "
                    f"step {self.step + 1}"
                )
        return None

    def _progress_problem(self, now: float) -> str | None:
        what, limit = self._allowance or ("training", self._limit)
        silent = now - self._last_beat
        if silent <= limit:
            return None
        peers = ", ".join(f"process {p} at step {s + 1}" for p, (_, s, _) in sorted(self._peers.items()))
        laggard = min(self._peers.items(), key=lambda item: item[1][1], default=None)
        who = (
            f"process {laggard[0]} stopped making progress at step {laggard[1][1] + 1}"
            if laggard is not None and laggard[1][1] < self.step
            else f"process {self.process} stopped making progress at step {self.step + 1}"
        )
        knob = "train.watchdog_s" if self.fixed_limit else "train.watchdog_s (0: from the step time)"
        return f"{who}: nothing finished for {silent:.0f} s while {what} (limit {limit:.0f} s, {knob})" + (
            f"; {peers}" if peers else ""
        )

    def _copy_stacks(self, stacks: Path) -> str:
        """Copies the stacks into a run directory on an object store; what to add to the line."""
        if not is_url(self.run_dir):
            return ""
        copy = self.run_dir / "stacks" / stacks.name
        try:
            write_atomic(copy, stacks.read_text())
        except Exception as error:  # the store may be what failed; the process must still exit
            return f" (copying them to {copy} failed: {type(error).__name__})"
        return f" and {copy}"

    def _fire(self, problem: str) -> None:
        self.fired = problem
        stacks = self.stacks_dir / f"process-{self.process}.txt"
        try:
            stacks.parent.mkdir(parents=True, exist_ok=True)
            with open(stacks, "w") as f:
                faulthandler.dump_traceback(f, all_threads=True)
            where = f"; Python stacks in {stacks}"
        except OSError as error:
            where = f"; the stacks could not be written ({error})"
        else:
            where += self._copy_stacks(stacks)
        print(f"meshtrain: error: {problem}{where}", file=sys.stderr, flush=True)
        if self.on_failure is not None:
            last_words = threading.Thread(target=self.on_failure, name="meshtrain-last-words", daemon=True)
            last_words.start()
            last_words.join(timeout=10)
        self._exit(PEER_FAILURE_EXIT)
