"""Prepares batches ahead of the device in a background thread, so data loading overlaps compute.

Each batch travels with the data-iterator state *after* it was read, so a checkpoint written after
step s records exactly the batches consumed by s steps, however far ahead the thread has read. The
state also carries `next_batch`, the global number of the next batch to read: batches the skip list
names are read and dropped here (never sent to the device), with the size of the step they precede.
It also travels with the state *before* it was read, for the data ledger (trainer/tracking/data_ledger.py).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable
from typing import Any

from meshtrain.trainer.data import FEATURES
from meshtrain.trainer.run.recovery import SkipList


@dataclasses.dataclass(frozen=True)
class Fed:
    """One step's batch on device, with the data state after it and the ledger's view of it."""

    batch: dict
    data_state: dict[str, Any]  # after the batch: what a checkpoint after this step records
    batch_number: int  # the batch's global number (skipped batches count)
    state_before: dict[str, Any]  # the stream's state right before it read this batch


def read_step(stream, rows: int, step: int, batch_number: int, skips: SkipList, stop=None):
    """Reads the batch of `step`, first reading and dropping the batches the skip list names from
    `batch_number` on: (host batch, its global number, the stream's state right before it).
    The one rule of what a step trains on, for training and for `meshtrain data show`."""
    while (resume_at := skips.end_of_skip(batch_number)) != batch_number:
        for _ in range(resume_at - batch_number):
            stream.next_batch(rows, step)
            if stop is not None and stop.is_set():
                return None
        batch_number = resume_at
    before = stream.get_state()
    return stream.next_batch(rows, step), batch_number, before


class Prefetcher:
    """Yields a Fed per step for steps start..end-1, `depth` batches ahead; the first batch read is
    number `first_batch`, and batches in `skips` are passed over."""

    def __init__(
        self,
        stream,
        rows_at: Callable[[int], int],
        start: int,
        end: int,
        depth: int,
        put: Callable,
        first_batch: int,
        skips: SkipList,
    ):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(stream, rows_at, start, end, put, first_batch, skips), daemon=True, name="prefetch"
        )
        self._thread.start()

    def _fill(self, stream, rows_at, start, end, put, batch_number, skips):
        try:
            for step in range(start, end):
                read = read_step(stream, rows_at(step), step, batch_number, skips, self._stop)
                if read is None:
                    return
                host_batch, number, before = read
                batch = put({k: host_batch[k] for k in FEATURES})
                batch_number = number + 1
                after = {**stream.get_state(), "next_batch": batch_number}
                if not self._offer(Fed(batch, after, number, before)):
                    return
        except BaseException as error:  # Handed to the consumer, which re-raises it.
            self._offer(error)

    def _offer(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def next(self) -> Fed:
        """The next step's Fed; re-raises whatever stopped the reading thread."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
