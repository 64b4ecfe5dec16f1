"""Reading a Hugging Face weights directory one tensor at a time: safetensors (single file, sharded
with an index, or loose shards), and PyTorch pickles only when asked (`allow_pickle`), loaded with
`torch.load(weights_only=True)`. The format and shared index are safetensors_index.py's."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from meshtrain.trainer.convert.safetensors_index import (
    DTYPES,
    PICKLE_INDEX,
    PICKLE_SUFFIXES,
    SAFETENSORS_FILE,
    SAFETENSORS_INDEX,
    Header,
    TensorIndex,
    listing,
    pickle_files,
    pickle_refused,
    unknown_name,
    weight_map,
)
from meshtrain.trainer.errors import UserError


class SafetensorsReader(TensorIndex):
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
        self._headers: dict[Path, Header] = {}
        self._where: dict[str, Path] = {}  # tensor name -> file holding it
        self._file: tuple[Path, Any] | None = None  # the one file kept open between reads
        self._index: Path | None = None  # the index file, for a sharded checkpoint
        for file, names in self._files().items():
            header = self._headers[file] = Header(file)
            for name in header.tensors if names is None else names:
                if name not in header.tensors:
                    raise UserError(
                        f"{self._index} says {file.name} holds {name!r} but its header "
                        f"does not list it; the checkpoint is inconsistent"
                    )
                if name in self._where:
                    raise UserError(
                        f"{self.path}: tensor {name!r} is in both {self._where[name].name} "
                        f"and {file.name}; keep one checkpoint per directory"
                    )
                self._where[name] = file

    def _files(self) -> dict[Path, list[str] | None]:
        """The files to read -> the names to take from each (None: all of its tensors)."""
        path = self.path
        if not path.exists():
            raise UserError(f"{path} does not exist (wanted a .safetensors file or a model directory)")
        if path.is_file():
            if path.suffix in PICKLE_SUFFIXES or path.name == PICKLE_INDEX:
                raise pickle_refused(path, [path])
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
        pickles = pickle_files(path)
        if pickles:
            raise pickle_refused(path, pickles)
        raise UserError(f"{path} holds no .safetensors files (nor {SAFETENSORS_INDEX}); found {listing(path)}")

    def _indexed(self, index: Path) -> dict[Path, list[str] | None]:
        self._index = index
        files: dict[Path, list[str] | None] = {}
        for name, file in weight_map(index).items():
            files.setdefault(file, []).append(name)
        return files

    def close(self) -> None:
        if self._file is not None:
            self._file[1].close()
            self._file = None

    def _entry(self, name: str) -> tuple[np.dtype, tuple[int, ...], int, int]:
        if name not in self._where:
            raise unknown_name(name, self._where, str(self.path))
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
                raise UserError(
                    f"{path}: tensor {name!r} ends at byte {end} of the data but the file ends "
                    f"first; it was truncated after it was opened"
                )
            done += got
        return out


class PickleReader(TensorIndex):
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
            files = pickle_files(self.path)
            if not files:
                raise UserError(f"{self.path} holds no PyTorch weights (.bin/.pt/.pth); found {listing(self.path)}")
        else:
            files = [self.path]
        if len(files) == 1 and files[0].name.endswith(".index.json"):
            wanted: dict[Path, list[str] | None] = {}
            for name, file in weight_map(files[0]).items():
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
                    raise UserError(
                        f"{self.path}: tensor {name!r} is in both {self._where[name].name} "
                        f"and {file.name}; keep one checkpoint per directory"
                    )
                self._where[name] = file
                self._specs[name] = (_numpy_dtype(tensors[name], file, name), tuple(tensors[name].shape))

    def _load(self, file: Path) -> dict[str, Any]:
        if self._loaded is not None and self._loaded[0] == file:
            return self._loaded[1]
        try:
            import torch
        except ImportError:
            raise UserError(
                f"reading PyTorch pickle weights ({file}) needs torch, which is not installed "
                f"(pip install torch), or convert them to safetensors elsewhere"
            ) from None
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
            raise unknown_name(name, self._specs, str(self.path))
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
TORCH_DTYPES = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint8": "U8",
    "bool": "BOOL",
}


def _numpy_dtype(tensor, file: Path, name: str) -> np.dtype:
    torch_name = str(tensor.dtype).removeprefix("torch.")
    if torch_name not in TORCH_DTYPES:
        raise UserError(
            f"{file}: tensor {name!r} has dtype {torch_name}, which cannot be converted; "
            f"known: {', '.join(TORCH_DTYPES)}"
        )
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
        pickles = [] if has_safetensors else pickle_files(path)
    else:
        pickles = [path] if path.suffix in PICKLE_SUFFIXES or path.name == PICKLE_INDEX else []
    if pickles:
        if not allow_pickle:
            raise pickle_refused(path, pickles)
        return PickleReader(path)
    return SafetensorsReader(path)
