"""The few host-side agreements the processes of a run make (all no-ops for a single process).

Each is a collective: every process must call it, in the same order.
"""

from __future__ import annotations

import json

import jax
import numpy as np
from jax.experimental import multihost_utils


def any_process(flag: bool) -> bool:
    """True on every process if `flag` is true on any."""
    return any_process_each(flag)[0]


def any_process_each(*flags: bool) -> tuple[bool, ...]:
    """For each flag, true on every process if it is true on any (one collective for all of them)."""
    if jax.process_count() == 1:
        return tuple(bool(f) for f in flags)
    gathered = multihost_utils.process_allgather(np.asarray(flags, dtype=bool))
    return tuple(bool(v) for v in np.asarray(gathered).reshape(-1, len(flags)).any(axis=0))


def sync_processes(name: str) -> None:
    """Waits until every process has reached the point called `name`."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather_json(value) -> list:
    """Every process's `value` (JSON-serializable), in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:size])) for row, size in zip(rows, sizes)]
