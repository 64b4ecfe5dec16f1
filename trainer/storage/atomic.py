"""Atomic file writes: a reader, or a run killed mid-write, sees the old file or the new one."""

from __future__ import annotations

import os

from meshtrain.trainer.storage.paths import as_path, is_url


def write_atomic(path: str | os.PathLike, data: str | bytes) -> None:
    """Writes `data` to `path`. On a disk: through a temporary file in the same directory, fsync
    and rename, the temporary file removed if anything fails. On an object store an object is
    written whole by one request, which is atomic already (and there is no cheap rename)."""
    path = as_path(path)
    if is_url(path):
        path.write_bytes(data) if isinstance(data, bytes) else path.write_text(data)
        return
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb" if isinstance(data, bytes) else "w") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
