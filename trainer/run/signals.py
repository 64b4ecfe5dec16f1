"""SIGTERM and SIGINT at any moment of a run: a clean stop, never a half-written state.

Inside the training loop a signal is a request: the loop checkpoints at the next step boundary
(processes agree on it at log steps) and exits. Before the loop's first step (start-up: data,
restore, the first compile, which may run for minutes inside XLA, where a Python handler cannot run)
there is nothing new to save, so the process ends at once with one line: the signal reaches a
thread through `signal.set_wakeup_fd`, which the interpreter writes even while the main thread is
inside C++.
"""

from __future__ import annotations

import os
import signal
import sys
import threading

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class StopRequest:
    """`requested` turns true on SIGTERM/SIGINT; before `in_loop` is set, the process exits."""

    def __init__(self, during_startup: str):
        self.requested = False
        self.in_loop = False
        self._during_startup = during_startup
        self._previous: dict = {}
        self._wakeup = None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only; a run in another thread is not stopped by one
        for sig in _SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        read, write = os.pipe()
        os.set_blocking(write, False)
        self._wakeup = (read, write, signal.set_wakeup_fd(write))
        threading.Thread(target=self._watch, args=(read,), name="meshtrain-signals", daemon=True).start()
        return self

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def _watch(self, read: int) -> None:
        while True:
            try:
                data = os.read(read, 16)
            except OSError:
                return
            if not data:
                return
            if any(b in _SIGNALS for b in data) and not self.in_loop:
                name = signal.Signals(next(b for b in data if b in _SIGNALS)).name
                print(f"meshtrain: stopped by {name} during start-up; {self._during_startup}", file=sys.stderr)
                sys.stderr.flush()
                os._exit(0)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        if self._wakeup is not None:
            read, write, previous = self._wakeup
            signal.set_wakeup_fd(previous)
            os.close(write)
            os.close(read)
