"""Prepares batches ahead of the device in a background thread, so data loading overlaps compute.

Each batch travels with the data-iterator state *after* it was read, so a checkpoint written after
step s records exactly the batches consumed by s steps, however far ahead the thread has read. The
state also carries `next_batch`, the global number of the next batch to read: batches the skip list
names are read and dropped here (never sent to the device), with the size of the step they precede.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable

from meshtrain.trainer.run.recovery import SkipList


class Prefetcher:
    """Yields (batch on device, iterator state) for steps start..end-1, `depth` batches ahead; the
    first batch read is number `first_batch`, and batches in `skips` are passed over."""

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
                rows = rows_at(step)
                while (resume_at := skips.end_of_skip(batch_number)) != batch_number:
                    for _ in range(resume_at - batch_number):
                        stream.next_batch(rows)
                        if self._stop.is_set():
                            return
                    batch_number = resume_at
                batch = put(stream.next_batch(rows))
                batch_number += 1
                if not self._offer((batch, {**stream.get_state(), "next_batch": batch_number})):
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

    def next(self):
        """The next (batch, iterator state); re-raises whatever stopped the reading thread."""
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
