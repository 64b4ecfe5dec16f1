"""meshtrain checkpoints, one parameter at a time: the streaming side of conversion.

Reading restores a single parameter from an Orbax checkpoint (a partial restore touches only that
array's chunks). Writing uses Orbax's partial saves: each call adds a few arrays to a checkpoint
that stays invisible until it is finalized, so a model is written without ever being whole in
memory. The result is an ordinary step directory that the trainer's CheckpointManager restores.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint.experimental import v1 as ocp_v1

from meshtrain.model.params import abstract_decoder
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.convert.family_base import ParamPath
from meshtrain.trainer.run.saved_weights import CHECKPOINTS_DIR, SavedCheckpoint


def _uncompressed() -> ocp_v1.Context:
    """Orbax settings for conversion writes. Compression would make Orbax hold a second, compressed
    copy of each array while writing it; model weights barely compress (random-looking mantissas)."""
    context = ocp_v1.Context()
    context.array.saving.use_compression = False
    return context


def release_freed_memory() -> None:
    """Returns freed heap memory to the OS (glibc's malloc_trim; a no-op elsewhere).

    TensorStore's threads allocate array buffers from glibc's per-thread arenas, and glibc keeps what
    they free for reuse. A streaming conversion frees one large parameter after another, so without
    trimming its resident memory would creep up towards the whole model it is trying not to hold.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


@functools.cache
def _libc():
    name = ctypes.util.find_library("c")  # runs ldconfig: once per process
    return ctypes.CDLL(name) if name else None


def param_shapes(cfg: ExperimentConfig) -> dict[ParamPath, tuple[tuple[int, ...], np.dtype]]:
    """Every parameter of cfg's model: path -> (shape, param dtype), without allocating any."""
    params = nnx.to_pure_dict(nnx.state(abstract_decoder(cfg.model), nnx.Param))
    return {
        tuple(k.key for k in path): (tuple(leaf.shape), np.dtype(leaf.dtype))
        for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]
    }


def nested(flat: dict[ParamPath, object]) -> dict:
    """{("a", "b"): x} -> {"a": {"b": x}}: the pure-dict layout parameters are saved in."""
    tree: dict = {}
    for path, value in flat.items():
        node = tree
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return tree


def read_param(saved: SavedCheckpoint, path: ParamPath, shape: tuple[int, ...], dtype) -> np.ndarray:
    """One parameter of a saved checkpoint as a host array in `dtype` (Orbax casts while reading)."""
    item = {"params": nested({path: jax.ShapeDtypeStruct(shape, dtype)})}
    restore_args = {"params": nested({path: ocp.RestoreArgs(restore_type=np.ndarray, dtype=dtype)})}
    with ocp.PyTreeCheckpointer() as checkpointer:
        restored = checkpointer.restore(
            saved.state_dir, args=ocp.args.PyTreeRestore(item=item, restore_args=restore_args, partial_restore=True)
        )
    node = restored["params"]
    for key in path:
        node = node[key]
    return np.asarray(node)


class StreamingCheckpointWriter:
    """Writes `directory/checkpoints/<step>/state` = {"params": ...} a few parameters at a time."""

    def __init__(self, directory: Path, step: int):
        (directory / CHECKPOINTS_DIR).mkdir(parents=True, exist_ok=True)
        self.step_dir = directory / CHECKPOINTS_DIR / str(step)
        self._written = 0

    def write(self, params: dict[ParamPath, np.ndarray]) -> None:
        """Adds these parameters to the checkpoint; paths never repeat across calls."""
        with _uncompressed():
            ocp_v1.partial.save(self.step_dir, {"params": nested(params)})
        self._written += len(params)

    def close(self) -> None:
        """Commits the checkpoint: until now it lived in a temporary directory beside step_dir."""
        if self._written:
            with _uncompressed():
                ocp_v1.partial.finalize(self.step_dir)
