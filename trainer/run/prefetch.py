"""Prepares batches ahead of the device in a background thread, so data loading overlaps compute.

Each batch travels with the data-iterator state *after* it was read, so a checkpoint written after
step s records exactly the batches consumed by s steps, however far ahead the thread has read.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable


class Prefetcher:
    """Yields (batch on device, iterator state) for steps start..end-1, `depth` batches ahead."""

    def __init__(self, stream, rows_at: Callable[[int], int], start: int, end: int, depth: int, put: Callable):
        self._queue: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._fill, args=(stream, rows_at, start, end, put), daemon=True, name="prefetch"
        )
        self._thread.start()

    def _fill(self, stream, rows_at, start, end, put):
        try:
            for step in range(start, end):
                batch = put(stream.next_batch(rows_at(step)))
                if not self._offer((batch, stream.get_state())):
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
