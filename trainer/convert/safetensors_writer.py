"""Writing safetensors one tensor at a time (numpy + ml_dtypes only), sharded as transformers shards.

Why not the `safetensors` package: its `save_file` takes a dict of every tensor, so writing a model
needs the whole model in host memory, and it would be a runtime dependency of meshtrain.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from meshtrain.trainer.convert.safetensors_index import (
    DEFAULT_MAX_SHARD_BYTES,
    DTYPE_CODES,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    SHARD_NAME,
    nbytes,
    unknown_name,
)
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.atomic import write_atomic


class SafetensorsWriter:
    """Writes a model as safetensors one tensor at a time, in any order, holding only the tensor given.

    Every tensor's name, shape and dtype is known up front (`tensors`), so the files are planned
    when the writer is made: tensors fill shards of at most `max_shard_bytes` in the order given (a
    larger tensor gets a shard of its own), one `model.safetensors` when all fit in one, else
    `model-0000i-of-0000K.safetensors` and a `model.safetensors.index.json` as transformers writes
    them. A shard's header needs only shapes and dtypes, so it is written when the shard's file is
    created, and `write` puts each tensor's bytes at its planned offset. Within a shard tensors are
    laid out widest dtype first (as the reference implementation does) so every tensor is aligned
    to its itemsize for readers that map the file.

    The files are written under temporary names and renamed by `close`, which checks every
    planned tensor was written; then stale `model*.safetensors` files and index from an earlier save
    in `directory` are removed, as transformers does, so they cannot shadow the new ones. Used as a
    context manager, an exception discards the temporary files instead.

    `metadata` goes into every header's "__metadata__", over {"format": "pt"} (transformers refuses
    safetensors without a "format").
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        tensors: Iterable[tuple[str, Sequence[int], Any]],
        *,
        metadata: dict[str, str] | None = None,
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    ):
        self.directory = Path(directory)
        if max_shard_bytes <= 0:
            raise UserError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
        metadata = {"format": "pt", **(metadata or {})}
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise UserError(f"safetensors metadata must map str to str, got {metadata!r}")
        # name -> (dtype, shape, shard index)
        self._plan: dict[str, tuple[np.dtype, tuple[int, ...], int]] = {}
        shards: list[list[str]] = [[]]
        used = 0
        for name, shape, dtype in tensors:
            if not isinstance(name, str) or not name or name == "__metadata__":
                raise UserError(f"bad tensor name {name!r}")
            if name in self._plan:
                raise UserError(f"tensor {name!r} is listed twice")
            shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
            if dtype not in DTYPE_CODES:
                raise UserError(
                    f"tensor {name!r}: safetensors cannot hold dtype {dtype}; "
                    f"supported: {', '.join(str(d) for d in DTYPE_CODES)}"
                )
            if any(d < 0 for d in shape):
                raise UserError(f"tensor {name!r}: bad shape {shape}")
            size = nbytes(shape, dtype)
            if shards[-1] and used + size > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(name)
            used += size
            self._plan[name] = (dtype, shape, len(shards) - 1)
        count = len(shards)
        self.files = (
            [SAFETENSORS_FILE]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        self._offsets: dict[str, tuple[int, int]] = {}  # name -> [begin, end) in its shard's data
        self._headers: list[bytes] = []
        for names in shards:
            header: dict[str, Any] = {"__metadata__": metadata}
            offset = 0
            for name in sorted(names, key=lambda n: -self._plan[n][0].itemsize):  # stable: keeps order
                dtype, shape, _ = self._plan[name]
                end = offset + nbytes(shape, dtype)
                header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
                self._offsets[name] = (offset, end)
                offset = end
            raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw += b" " * (-len(raw) % 8)
            self._headers.append(struct.pack("<Q", len(raw)) + raw)
        self._sizes = [
            len(h) + sum(self._offsets[n][1] - self._offsets[n][0] for n in names)
            for h, names in zip(self._headers, shards)
        ]
        self._written: set[str] = set()
        self._created: set[int] = set()
        self._file: tuple[int, Any] | None = None  # the one shard file kept open between writes
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)

    def _tmp(self, shard: int) -> Path:
        return self.directory / f".{self.files[shard]}.{os.getpid()}.tmp"

    def _open(self, shard: int):
        if self._file is not None and self._file[0] == shard:
            return self._file[1]
        self._close_file()
        path = self._tmp(shard)
        if shard not in self._created:
            with open(path, "wb") as f:
                f.write(self._headers[shard])
                f.truncate(self._sizes[shard])  # the data's full extent, filled in by write()
            self._created.add(shard)
        self._file = (shard, open(path, "r+b"))
        return self._file[1]

    def _close_file(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None

    def write(self, name: str, array: Any) -> None:
        """Writes one planned tensor, whose shape and dtype must be those planned."""
        if self._closed:
            raise UserError(f"cannot write {name!r}: the writer to {self.directory} is closed")
        if name not in self._plan:
            raise unknown_name(name, self._plan, f"the plan for {self.directory}")
        if name in self._written:
            raise UserError(f"tensor {name!r} was already written to {self.directory}")
        dtype, shape, shard = self._plan[name]
        array = np.asarray(array)
        if array.shape != shape or array.dtype != dtype:
            raise UserError(
                f"tensor {name!r}: expected shape {shape} dtype {dtype}, found shape {array.shape} dtype {array.dtype}"
            )
        begin, end = self._offsets[name]
        f = self._open(shard)
        if end > begin:
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            f.seek(len(self._headers[shard]) + begin)
            f.write(memoryview(data))
        self._written.add(name)

    def __enter__(self) -> SafetensorsWriter:
        return self

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def abort(self) -> None:
        """Discards the temporary files; nothing in `directory` changes."""
        self._close_file()
        for shard in self._created:
            self._tmp(shard).unlink(missing_ok=True)
        self._created.clear()
        self._closed = True

    def close(self) -> None:
        """Checks every planned tensor was written, then syncs and renames the files into place and
        writes the index (sharded). A missing tensor discards the files and raises UserError."""
        if self._closed:
            return
        missing = [name for name in self._plan if name not in self._written]
        if missing:
            self.abort()
            shown = ", ".join(map(repr, missing[:10])) + (
                f", ... ({len(missing) - 10} more)" if len(missing) > 10 else ""
            )
            raise UserError(
                f"{len(missing)} of {len(self._plan)} planned tensors were never written to {self.directory}: {shown}"
            )
        try:
            self._close_file()
            for shard in range(len(self.files)):
                if shard not in self._created:  # only when nothing was planned at all
                    self._open(shard)
                    self._close_file()
                with open(self._tmp(shard), "r+b") as f:
                    os.fsync(f.fileno())
            for shard, file in enumerate(self.files):
                os.replace(self._tmp(shard), self.directory / file)
            self._created.clear()
            if len(self.files) > 1:
                weight_map = {name: self.files[self._plan[name][2]] for name in sorted(self._plan)}
                total = sum(end - begin for begin, end in self._offsets.values())
                write_atomic(
                    self.directory / SAFETENSORS_INDEX,
                    json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2, sort_keys=True)
                    + "\n",
                )
            self._remove_stale()
        except BaseException:
            self.abort()
            raise
        self._closed = True

    def _remove_stale(self) -> None:
        keep = set(self.files) | ({SAFETENSORS_INDEX} if len(self.files) > 1 else set())
        for path in self.directory.iterdir():
            if path.name in keep or not path.is_file():
                continue
            if path.name in (SAFETENSORS_FILE, SAFETENSORS_INDEX) or SHARD_NAME.fullmatch(path.name):
                path.unlink()
