"""An append-only log (metrics.jsonl, TensorBoard event files) on a disk or on an object store.

On a disk it is one file, appended to and flushed at each write (`tail -f` follows it). An object
cannot be appended to: a log there is a series of part objects `<name>`, `<name>.0001`, ... Each
writer starts a part of its own after the ones that exist (a resumed run never rewrites what an
earlier process wrote), rewrites its current part whole at each flush, and starts the next part
once the current one holds `part_bytes`, so a flush costs at most one part's upload however long
the run. Parts sort by name in write order: `read_log` and TensorBoard (which reads every
`*tfevents*` object of a directory in name order) see one logical file.
"""

from __future__ import annotations

import os
import re

from meshtrain.trainer.storage.paths import as_path, is_url

PART_BYTES = 1 << 20


def log_parts(path: str | os.PathLike) -> list:
    """The files holding the log at `path`, in write order: [path] on a disk (if it exists);
    on an object store, path and its numbered parts."""
    path = as_path(path)
    if not path.parent.exists():
        return []
    part = re.compile(re.escape(path.name) + r"(\.\d{4,})?$")
    found = [p for p in path.parent.iterdir() if part.fullmatch(p.name)]
    return sorted(found, key=lambda p: (len(p.name), p.name))


def read_log(path: str | os.PathLike) -> str:
    """The whole log at `path` as one text ('' when there is none)."""
    return "".join(p.read_text() for p in log_parts(path))


class AppendLog:
    """write(text or bytes) appends; flush() makes what was written durable; close() flushes."""

    def __init__(self, path: str | os.PathLike, *, binary: bool = False, part_bytes: int = PART_BYTES):
        self.path = as_path(path)
        self._binary = binary
        self._part_bytes = part_bytes
        self._remote = is_url(self.path)
        if self._remote:
            existing = log_parts(self.path)
            self._part = len(existing) if existing else 0
            self._buffer = bytearray()
            self._dirty = False
        else:
            self._file = open(self.path, "ab" if binary else "a")

    def write(self, data: str | bytes) -> None:
        if not self._remote:
            self._file.write(data)
            return
        self._buffer += data if isinstance(data, bytes) else data.encode()
        self._dirty = True

    def flush(self) -> None:
        if not self._remote:
            self._file.flush()
            return
        if not self._dirty:
            return
        self._part_path().write_bytes(bytes(self._buffer))
        self._dirty = False
        if len(self._buffer) >= self._part_bytes:
            self._part += 1
            self._buffer = bytearray()

    def close(self) -> None:
        if self._remote:
            self.flush()
        else:
            self._file.close()

    def _part_path(self):
        return self.path if self._part == 0 else self.path.with_name(f"{self.path.name}.{self._part:04d}")
