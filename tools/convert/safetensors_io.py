"""Streaming safetensors reader and writer (numpy + ml_dtypes only), and a PyTorch pickle reader.

Why not the `safetensors` package: its `save_file` takes a dict of every tensor, so writing a model
needs the whole model in host memory, and it would be a runtime dependency of meshtrain. A
conversion here goes tensor by tensor: `SafetensorsReader.read` brings one tensor into memory,
`SafetensorsWriter.write` puts one tensor at the offset planned for it, so host memory stays near
the largest tensor whatever the model's size.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian u64 N, N bytes of
JSON header `{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`
padded with spaces to a multiple of 8, then the data buffer, tensors little-endian and C-ordered,
offsets relative to the buffer's start. The reference reader wants the tensors to tile the buffer
exactly (no gaps, no trailing bytes); the writer keeps to that, the reader here is lenient.

A Hugging Face model directory holds `model.safetensors`, or shards `model-0000i-of-0000K.safetensors`
named by `model.safetensors.index.json` ({"metadata": {"total_size"}, "weight_map": {name: file}}).
Older ones hold `pytorch_model.bin` pickles instead: loading a pickle can run arbitrary code, so
`open_weights` refuses them unless asked (`allow_pickle`, the command line's --allow-pickle), and
then loads them with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
import struct
import sys
from pathlib import Path
from typing import Any, Iterable, Sequence

import ml_dtypes
import numpy as np

from trainer.atomic import write_atomic
from trainer.errors import UserError

SAFETENSORS_FILE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_FILE = "pytorch_model.bin"
PICKLE_INDEX = "pytorch_model.bin.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth")
# Pickles a Hugging Face or PyTorch training run leaves beside the weights; not weights.
NOT_WEIGHTS = re.compile(r"(training_args\.bin|optimizer\.pt|scheduler\.pt|scaler\.pt|rng_state.*\.pth)")
# The shard names transformers writes; the writer removes stale ones it did not write.
SHARD_NAME = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")

# The reference implementation refuses headers over 100 MB; a corrupt length is usually far larger.
MAX_HEADER_BYTES = 100_000_000
DEFAULT_MAX_SHARD_BYTES = 5 * 2**30

# safetensors dtype code -> numpy dtype (the data is little-endian, as is every host jax runs on).
DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn), "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"), "U32": np.dtype("<u4"), "U16": np.dtype("<u2"), "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_CODES: dict[np.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - no such host runs jax
    raise ImportError("tools.convert.safetensors_io reads and writes little-endian data on little-endian hosts only")


def _nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _unknown_name(name: str, known: Iterable[str], where: str) -> UserError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" ({len(known)} tensors)"
    return UserError(f"{where} has no tensor {name!r}{hint}")


def _listing(directory: Path, limit: int = 10) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not entries:
        return "nothing (it is empty)"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def _pickle_files(directory: Path) -> list[Path]:
    """The PyTorch pickle weight files in `directory`, by the same preference transformers has: the
    shards an index names, else pytorch_model.bin, else every other .bin/.pt/.pth."""
    index = directory / PICKLE_INDEX
    if index.is_file():
        return [index]
    if (directory / PICKLE_FILE).is_file():
        return [directory / PICKLE_FILE]
    return sorted(p for p in directory.iterdir()
                  if p.is_file() and p.suffix in PICKLE_SUFFIXES and not NOT_WEIGHTS.fullmatch(p.name))


def _pickle_refused(path: Path, files: Sequence[Path]) -> UserError:
    names = ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
    return UserError(
        f"{path} holds PyTorch pickle weights ({names}) and no .safetensors files. Loading a pickle can "
        f"run arbitrary code, so they are not loaded by default; if you trust their source, pass "
        f"--allow-pickle to load them with torch (torch.load(weights_only=True)), or convert them to "
        f"safetensors first.")


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the {what}: {e}") from None


def _weight_map(index: Path) -> dict[str, Path]:
    """name -> shard file from a Hugging Face index file, every file checked to exist."""
    body = _read_json(index, "checkpoint index")
    weight_map = body.get("weight_map") if isinstance(body, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise UserError(f"{index}: not a checkpoint index: no \"weight_map\" object of tensor name -> file")
    files = {}
    for file in sorted(set(weight_map.values())):
        path = index.parent / file
        if not path.is_file():
            users = [n for n, f in weight_map.items() if f == file]
            raise UserError(f"{index} names {file!r} (for {len(users)} tensors, e.g. {users[0]!r}) but "
                            f"{path} does not exist; the checkpoint is incomplete")
        files[file] = path
    return {name: files[file] for name, file in weight_map.items()}


class _Header:
    """One safetensors file's parsed and checked header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise UserError(f"{path}: not a safetensors file: {size} bytes, too short to hold the "
                                    f"8-byte header length")
                (length,) = struct.unpack("<Q", head)
                if length > min(size - 8, MAX_HEADER_BYTES):
                    raise UserError(f"{path}: truncated or not a safetensors file: the header length reads "
                                    f"{length} bytes but the file has {size - 8} after it")
                raw = f.read(length)
        except OSError as e:
            raise UserError(f"{path}: cannot read: {e}") from None
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise UserError(f"{path}: corrupt safetensors header (not valid JSON: {e})") from None
        if not isinstance(header, dict):
            raise UserError(f"{path}: corrupt safetensors header: a JSON {type(header).__name__}, not an object")
        self.data_start = 8 + length
        buffer_size = size - self.data_start
        metadata = header.pop("__metadata__", None) or {}
        if not isinstance(metadata, dict):
            raise UserError(f"{path}: corrupt safetensors header: \"__metadata__\" is not an object")
        self.metadata: dict[str, str] = metadata
        # name -> (dtype, shape, begin, end), begin/end relative to the data buffer.
        self.tensors: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self.tensors[name] = self._check(name, entry, buffer_size)

    def _check(self, name: str, entry: Any, buffer_size: int):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise UserError(f"{where}: corrupt header entry {entry!r}: wants dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in DTYPES:
            raise UserError(f"{where}: unknown dtype {code!r}; known: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise UserError(f"{where}: corrupt shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(type(o) is int for o in offsets) or not 0 <= offsets[0] <= offsets[1]):
            raise UserError(f"{where}: corrupt data_offsets {offsets!r}")
        dtype, (begin, end) = DTYPES[code], offsets
        if end > buffer_size:
            raise UserError(f"{where}: data_offsets [{begin}, {end}] reach past the end of the data "
                            f"({buffer_size} bytes); the file is truncated or corrupt")
        if end - begin != _nbytes(shape, dtype):
            raise UserError(f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes but shape "
                            f"{shape} of {code} needs {_nbytes(shape, dtype)}")
        return dtype, tuple(shape), begin, end


class _TensorIndex:
    """What both readers share: `_where` maps each tensor name to the file holding it."""

    _where: dict[str, Path]

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        raise NotImplementedError

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def __len__(self) -> int:
        return len(self._where)

    def names(self) -> list[str]:
        """Every tensor name, sorted."""
        return sorted(self._where)


class SafetensorsReader(_TensorIndex):
    """Reads tensors one at a time from a .safetensors file or a Hugging Face model directory.

    `path` is a .safetensors file, a `model.safetensors.index.json`, or a directory holding
    `model.safetensors`, shards named by `model.safetensors.index.json`, or (no index) any
    `*.safetensors` files. Every header is read and checked when it opens; `read` then seeks to one
    tensor and reads only its bytes into a fresh array, so a model of any size reads in the memory of
    its largest tensor (a memmap would keep the pages it touched resident). Bad input raises
    `UserError` naming the file.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._headers: dict[Path, _Header] = {}
        self._where: dict[str, Path] = {}  # tensor name -> file holding it
        self._file: tuple[Path, Any] | None = None  # the one file kept open between reads
        self._index: Path | None = None  # the index file, for a sharded checkpoint
        for file, names in self._files().items():
            header = self._headers[file] = _Header(file)
            for name in header.tensors if names is None else names:
                if name not in header.tensors:
                    raise UserError(f"{self._index} says {file.name} holds {name!r} but its header "
                                    f"does not list it; the checkpoint is inconsistent")
                if name in self._where:
                    raise UserError(f"{self.path}: tensor {name!r} is in both {self._where[name].name} "
                                    f"and {file.name}; keep one checkpoint per directory")
                self._where[name] = file

    def _files(self) -> dict[Path, list[str] | None]:
        """The files to read -> the names to take from each (None: all of its tensors)."""
        path = self.path
        if not path.exists():
            raise UserError(f"{path} does not exist (wanted a .safetensors file or a model directory)")
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES or path.name == PICKLE_INDEX:
                raise _pickle_refused(path, [path])
            if path.name.endswith(".index.json"):
                return self._indexed(path)
            return {path: None}
        index = path / SAFETENSORS_INDEX
        if index.is_file():
            return self._indexed(index)
        if (path / SAFETENSORS_FILE).is_file():
            return {path / SAFETENSORS_FILE: None}
        files = sorted(p for p in path.glob("*.safetensors") if p.is_file())
        if files:
            return {p: None for p in files}
        pickles = _pickle_files(path)
        if pickles:
            raise _pickle_refused(path, pickles)
        raise UserError(f"{path} holds no .safetensors files (nor {SAFETENSORS_INDEX}); found {_listing(path)}")

    def _indexed(self, index: Path) -> dict[Path, list[str] | None]:
        self._index = index
        files: dict[Path, list[str] | None] = {}
        for name, file in _weight_map(index).items():
            files.setdefault(file, []).append(name)
        return files

    def close(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None

    def _entry(self, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
        if name not in self._where:
            raise _unknown_name(name, self._where, str(self.path))
        return self._headers[self._where[name]].tensors[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entry(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._entry(name)[0]

    def metadata(self) -> dict[str, str]:
        """The header's "__metadata__" (of every shard, merged: transformers writes {"format": "pt"})."""
        merged: dict[str, str] = {}
        for header in self._headers.values():
            merged.update(header.metadata)
        return merged

    def read(self, name: str) -> np.ndarray:
        """One tensor as an array that owns its memory; only its bytes are read from disk."""
        dtype, shape, begin, end = self._entry(name)
        path = self._where[name]
        out = np.empty(shape, dtype)
        if end == begin:
            return out
        if self._file is None or self._file[0] != path:
            self.close()
            try:
                self._file = (path, open(path, "rb", buffering=0))
            except OSError as e:
                raise UserError(f"{path}: cannot read: {e}") from None
        f = self._file[1]
        f.seek(self._headers[path].data_start + begin)
        view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
        while done < end - begin:  # one read returns at most ~2 GiB on Linux
            got = f.readinto(view[done:])
            if not got:
                raise UserError(f"{path}: tensor {name!r} ends at byte {end} of the data but the file ends "
                                f"first; it was truncated after it was opened")
            done += got
        return out


class PickleReader(_TensorIndex):
    """The `SafetensorsReader` interface over PyTorch pickle weights (.bin/.pt/.pth, or shards named by
    `pytorch_model.bin.index.json`), for sources one trusts (see `open_weights`).

    Loads with `torch.load(map_location="cpu", weights_only=True, mmap=True)` (mmap where the file's
    format allows), one file at a time: the last file loaded is kept for the reads that follow.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.exists():
            raise UserError(f"{self.path} does not exist (wanted PyTorch weights or a model directory)")
        if self.path.is_dir():
            files = _pickle_files(self.path)
            if not files:
                raise UserError(f"{self.path} holds no PyTorch weights (.bin/.pt/.pth); found {_listing(self.path)}")
        else:
            files = [self.path]
        if len(files) == 1 and files[0].name.endswith(".index.json"):
            wanted: dict[Path, list[str] | None] = {}
            for name, file in _weight_map(files[0]).items():
                wanted.setdefault(file, []).append(name)
        else:
            wanted = {file: None for file in files}
        self._loaded: tuple[Path, dict[str, Any]] | None = None
        self._where: dict[str, Path] = {}
        self._specs: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for file, names in wanted.items():
            tensors = self._load(file)
            for name in tensors if names is None else names:
                if name not in tensors:
                    raise UserError(f"{files[0]} says {file.name} holds {name!r} but it does not")
                if name in self._where:
                    raise UserError(f"{self.path}: tensor {name!r} is in both {self._where[name].name} "
                                    f"and {file.name}; keep one checkpoint per directory")
                self._where[name] = file
                self._specs[name] = (_numpy_dtype(tensors[name], file, name), tuple(tensors[name].shape))

    def _load(self, file: Path) -> dict[str, Any]:
        if self._loaded is not None and self._loaded[0] == file:
            return self._loaded[1]
        try:
            import torch
        except ImportError:
            raise UserError(f"reading PyTorch pickle weights ({file}) needs torch, which is not installed "
                            f"(pip install torch), or convert them to safetensors elsewhere") from None
        self._loaded = None  # drop the previous file before loading the next
        try:
            try:
                state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError:  # a legacy (non-zip) file cannot be memory-mapped
                state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"{file}: cannot load as PyTorch weights with weights_only=True: {e}") from None
        tensors = _flatten_tensors(state, torch)
        if not tensors:
            raise UserError(f"{file}: holds no tensors (a {type(state).__name__})")
        self._loaded = (file, tensors)
        return tensors

    def close(self) -> None:
        self._loaded = None

    def _spec(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        if name not in self._specs:
            raise _unknown_name(name, self._specs, str(self.path))
        return self._specs[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self._spec(name)[1]

    def dtype(self, name: str) -> np.dtype:
        return self._spec(name)[0]

    def metadata(self) -> dict[str, str]:
        """Pickled weights carry no metadata."""
        return {}

    def read(self, name: str) -> np.ndarray:
        """One tensor as a numpy array that owns its memory (bf16 as ml_dtypes.bfloat16)."""
        import torch

        dtype, _ = self._spec(name)
        tensor = self._load(self._where[name])[name].detach().contiguous()
        # numpy has no bfloat16/float8: move the bits through a same-width integer type.
        if dtype == DTYPES["BF16"]:
            return tensor.view(torch.int16).numpy().view(dtype).copy()
        if dtype in (DTYPES["F8_E4M3"], DTYPES["F8_E5M2"]):
            return tensor.view(torch.uint8).numpy().view(dtype).copy()
        return tensor.numpy().copy()


# torch dtype name -> safetensors code, for the dtypes numpy can hold.
TORCH_DTYPES = {"float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
                "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2", "int64": "I64", "int32": "I32",
                "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


def _numpy_dtype(tensor, file: Path, name: str) -> np.dtype:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    if torch_name not in TORCH_DTYPES:
        raise UserError(f"{file}: tensor {name!r} has dtype {torch_name}, which cannot be converted; "
                        f"known: {', '.join(TORCH_DTYPES)}")
    return DTYPES[TORCH_DTYPES[torch_name]]


def _flatten_tensors(state: Any, torch, prefix: str = "") -> dict[str, Any]:
    """The tensors of a loaded pickle: a state dict, nested dicts joined with "."; other values dropped."""
    out: dict[str, Any] = {}
    if isinstance(state, dict):
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                out[f"{prefix}{key}"] = value
            elif isinstance(value, dict):
                out.update(_flatten_tensors(value, torch, f"{prefix}{key}."))
    return out


def open_weights(directory: str | os.PathLike, *, allow_pickle: bool) -> SafetensorsReader | PickleReader:
    """A reader over a model's weights: safetensors when there are any; PyTorch pickles only with
    `allow_pickle` (a pickle can run arbitrary code when loaded; they load with weights_only=True),
    else a UserError saying so."""
    path = Path(directory)
    if path.is_dir():
        has_safetensors = (path / SAFETENSORS_INDEX).is_file() or any(p.is_file() for p in path.glob("*.safetensors"))
        pickles = [] if has_safetensors else _pickle_files(path)
    else:
        pickles = [path] if path.suffix in PICKLE_SUFFIXES or path.name == PICKLE_INDEX else []
    if pickles:
        if not allow_pickle:
            raise _pickle_refused(path, pickles)
        return PickleReader(path)
    return SafetensorsReader(path)


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

    def __init__(self, directory: str | os.PathLike, tensors: Iterable[tuple[str, Sequence[int], Any]], *,
                 metadata: dict[str, str] | None = None, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
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
                raise UserError(f"tensor {name!r}: safetensors cannot hold dtype {dtype}; "
                                f"supported: {', '.join(str(d) for d in DTYPE_CODES)}")
            if any(d < 0 for d in shape):
                raise UserError(f"tensor {name!r}: bad shape {shape}")
            size = _nbytes(shape, dtype)
            if shards[-1] and used + size > max_shard_bytes:
                shards.append([])
                used = 0
            shards[-1].append(name)
            used += size
            self._plan[name] = (dtype, shape, len(shards) - 1)
        count = len(shards)
        self.files = [SAFETENSORS_FILE] if count == 1 else \
            [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        self._offsets: dict[str, tuple[int, int]] = {}  # name -> [begin, end) in its shard's data
        self._headers: list[bytes] = []
        for names in shards:
            header: dict[str, Any] = {"__metadata__": metadata}
            offset = 0
            for name in sorted(names, key=lambda n: -self._plan[n][0].itemsize):  # stable: keeps order
                dtype, shape, _ = self._plan[name]
                end = offset + _nbytes(shape, dtype)
                header[name] = {"dtype": DTYPE_CODES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
                self._offsets[name] = (offset, end)
                offset = end
            raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
            raw += b" " * (-len(raw) % 8)
            self._headers.append(struct.pack("<Q", len(raw)) + raw)
        self._sizes = [len(h) + sum(self._offsets[n][1] - self._offsets[n][0] for n in names)
                       for h, names in zip(self._headers, shards)]
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
            raise _unknown_name(name, self._plan, f"the plan for {self.directory}")
        if name in self._written:
            raise UserError(f"tensor {name!r} was already written to {self.directory}")
        dtype, shape, shard = self._plan[name]
        array = np.asarray(array)
        if array.shape != shape or array.dtype != dtype:
            raise UserError(f"tensor {name!r}: expected shape {shape} dtype {dtype}, found shape "
                            f"{array.shape} dtype {array.dtype}")
        begin, end = self._offsets[name]
        f = self._open(shard)
        if end > begin:
            data = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            f.seek(len(self._headers[shard]) + begin)
            f.write(memoryview(data))
        self._written.add(name)

    def __enter__(self) -> "SafetensorsWriter":
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
            shown = ", ".join(map(repr, missing[:10])) + (f", ... ({len(missing) - 10} more)" if len(missing) > 10 else "")
            raise UserError(f"{len(missing)} of {len(self._plan)} planned tensors were never written to "
                            f"{self.directory}: {shown}")
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
                write_atomic(self.directory / SAFETENSORS_INDEX,
                             json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                        indent=2, sort_keys=True) + "\n")
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
