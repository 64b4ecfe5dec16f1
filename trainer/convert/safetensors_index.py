"""The safetensors format and what a Hugging Face weights directory holds: file names, dtype codes,
headers, and the tensor index the readers share. Reading is safetensors_reader.py, writing
safetensors_writer.py (numpy + ml_dtypes only), with a PyTorch pickle reader beside the first.

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
import re
import struct
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np

from meshtrain.trainer.errors import UserError

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
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U64": np.dtype("<u8"),
    "U32": np.dtype("<u4"),
    "U16": np.dtype("<u2"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype(np.bool_),
}
DTYPE_CODES: dict[np.dtype, str] = {dtype: code for code, dtype in DTYPES.items()}

if sys.byteorder != "little":  # pragma: no cover - no such host runs jax
    raise ImportError(
        "meshtrain.trainer.convert.safetensors reads and writes little-endian data on little-endian hosts only"
    )


def nbytes(shape: Sequence[int], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def unknown_name(name: str, known: Iterable[str], where: str) -> UserError:
    known = list(known)
    close = difflib.get_close_matches(name, known, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else f" ({len(known)} tensors)"
    return UserError(f"{where} has no tensor {name!r}{hint}")


def listing(directory: Path, limit: int = 10) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in directory.iterdir())
    if not entries:
        return "nothing (it is empty)"
    more = f", ... ({len(entries) - limit} more)" if len(entries) > limit else ""
    return ", ".join(entries[:limit]) + more


def pickle_files(directory: Path) -> list[Path]:
    """The PyTorch pickle weight files in `directory`, by the same preference transformers has: the
    shards an index names, else pytorch_model.bin, else every other .bin/.pt/.pth."""
    index = directory / PICKLE_INDEX
    if index.is_file():
        return [index]
    if (directory / PICKLE_FILE).is_file():
        return [directory / PICKLE_FILE]
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file() and p.suffix in PICKLE_SUFFIXES and not NOT_WEIGHTS.fullmatch(p.name)
    )


def pickle_refused(path: Path, files: Sequence[Path]) -> UserError:
    names = ", ".join(p.name for p in files[:5]) + (", ..." if len(files) > 5 else "")
    return UserError(
        f"{path} holds PyTorch pickle weights ({names}) and no .safetensors files. Loading a pickle can "
        f"run arbitrary code, so they are not loaded by default; if you trust their source, pass "
        f"--allow-pickle to load them with torch (torch.load(weights_only=True)), or convert them to "
        f"safetensors first."
    )


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: cannot read the {what}: {e}") from None


def weight_map(index: Path) -> dict[str, Path]:
    """name -> shard file from a Hugging Face index file, every file checked to exist."""
    body = _read_json(index, "checkpoint index")
    weight_map = body.get("weight_map") if isinstance(body, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(f, str) for f in weight_map.values()):
        raise UserError(f'{index}: not a checkpoint index: no "weight_map" object of tensor name -> file')
    files = {}
    for file in sorted(set(weight_map.values())):
        path = index.parent / file
        if not path.is_file():
            users = [n for n, f in weight_map.items() if f == file]
            raise UserError(
                f"{index} names {file!r} (for {len(users)} tensors, e.g. {users[0]!r}) but "
                f"{path} does not exist; the checkpoint is incomplete"
            )
        files[file] = path
    return {name: files[file] for name, file in weight_map.items()}


class Header:
    """One safetensors file's parsed and checked header."""

    def __init__(self, path: Path):
        self.path = path
        try:
            size = path.stat().st_size
            with open(path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise UserError(
                        f"{path}: not a safetensors file: {size} bytes, too short to hold the 8-byte header length"
                    )
                (length,) = struct.unpack("<Q", head)
                if length > min(size - 8, MAX_HEADER_BYTES):
                    raise UserError(
                        f"{path}: truncated or not a safetensors file: the header length reads "
                        f"{length} bytes but the file has {size - 8} after it"
                    )
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
            raise UserError(f'{path}: corrupt safetensors header: "__metadata__" is not an object')
        self.metadata: dict[str, str] = metadata
        # name -> (dtype, shape, begin, end), begin/end relative to the data buffer.
        self.tensors: dict[str, tuple[np.dtype, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self.tensors[name] = self._check(name, entry, buffer_size)
        self._check_layout(buffer_size)

    def _check_layout(self, buffer_size: int) -> None:
        """The tensors tile the data buffer exactly, in offset order, as the safetensors library
        demands (its validate(): each begins where the previous ends, the last ends at the end):
        overlapping offsets would give one tensor another's bytes."""
        expected = 0
        for name, (_, _, begin, end) in sorted(self.tensors.items(), key=lambda item: item[1][2:]):
            if begin != expected:
                what = (
                    "overlaps the tensor before it" if begin < expected else "leaves a gap after the tensor before it"
                )
                raise UserError(
                    f"{self.path}: tensor {name!r}: data_offsets [{begin}, {end}] {what} (which ends at "
                    f"{expected}); the file is corrupt (the safetensors library refuses it too)"
                )
            expected = end
        if expected != buffer_size:
            raise UserError(
                f"{self.path}: the tensors end at byte {expected} of a {buffer_size}-byte data buffer; the file "
                "is corrupt (the safetensors library refuses it too)"
            )

    def _check(self, name: str, entry: Any, buffer_size: int):
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict) or not {"dtype", "shape", "data_offsets"} <= entry.keys():
            raise UserError(f"{where}: corrupt header entry {entry!r}: wants dtype, shape and data_offsets")
        code, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if code not in DTYPES:
            raise UserError(f"{where}: unknown dtype {code!r}; known: {', '.join(DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise UserError(f"{where}: corrupt shape {shape!r}")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise UserError(f"{where}: corrupt data_offsets {offsets!r}")
        dtype, (begin, end) = DTYPES[code], offsets
        if end > buffer_size:
            raise UserError(
                f"{where}: data_offsets [{begin}, {end}] reach past the end of the data "
                f"({buffer_size} bytes); the file is truncated or corrupt"
            )
        if end - begin != nbytes(shape, dtype):
            raise UserError(
                f"{where}: data_offsets [{begin}, {end}] hold {end - begin} bytes but shape "
                f"{shape} of {code} needs {nbytes(shape, dtype)}"
            )
        return dtype, tuple(shape), begin, end


class TensorIndex:
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
