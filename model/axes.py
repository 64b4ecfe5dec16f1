"""Logical axis names: the only vocabulary the model uses to say how arrays may be split.

The sharding package maps these names to mesh axes through a Layout it installs while the train
step is traced (`use_layout`); the model itself never mentions a mesh, so the same code runs
unsharded on a CPU and sharded on a pod.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Protocol

import jax
from flax import nnx

BATCH = "batch"
LENGTH = "length"
EMBED = "embed"
HEADS = "heads"  # query heads
KV_HEADS = "kv_heads"  # key/value heads: 1 under multi-query attention, so never split like HEADS
KV = "kv"  # the width of one head (head_dim), as in MaxText
MLP = "mlp"
VOCAB = "vocab"
LAYERS = "layers"  # the leading axis of stacked (scanned) layer parameters

ALL = (BATCH, LENGTH, EMBED, HEADS, KV_HEADS, KV, MLP, VOCAB, LAYERS)

# The metadata key nnx.with_partitioning stores axis names under (flax >= 0.12; was `sharding`).
_METADATA_KEY = "out_sharding"


class Layout(Protocol):
    """What the sharding package tells the model while a step is traced."""

    def constrain(self, x: jax.Array, names: tuple[str, ...]) -> jax.Array:
        """`x` with a sharding constraint along logical axes `names`."""

    def mlp_output(self, h: jax.Array, kernel: jax.Array) -> jax.Array | None:
        """h [batch, length, mlp] @ kernel [mlp, embed] with explicit collectives, or None for
        the compiler's own."""

    @property
    def platform(self) -> str:
        """The platform of the mesh's devices (the target of an AOT compile, not this host's)."""

    def split_ways(self, name: str) -> int:
        """Into how many parts the mesh splits a dimension named `name`."""

    def per_shard(self, fn, args: tuple, in_names: tuple, out_names: tuple):
        """fn applied to each device's shard of `args` (a shard_map), along logical axes
        `in_names` (one tuple per argument; None = never split) and `out_names`."""


_LAYOUT: contextvars.ContextVar[Layout | None] = contextvars.ContextVar("layout", default=None)


@contextlib.contextmanager
def use_layout(layout: Layout | None) -> Iterator[None]:
    """Installs `layout` for the model code traced inside the block."""
    token = _LAYOUT.set(layout)
    try:
        yield
    finally:
        _LAYOUT.reset(token)


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """Asks the compiler to lay out activation `x` along logical axes `names`.

    A no-op unless a Layout is installed, so single-device runs and tests pay nothing for the
    annotations.
    """
    layout = _LAYOUT.get()
    return x if layout is None else layout.constrain(x, names)


def collective_mlp_output(h: jax.Array, kernel: jax.Array) -> jax.Array | None:
    """The MLP's output projection h @ kernel, contracting the `mlp` axis that tensor parallelism
    splits, as the installed Layout's collective matmul that overlaps the reduction with compute;
    None where it has none, and the caller does a plain matmul whose reduction the compiler inserts."""
    layout = _LAYOUT.get()
    return None if layout is None else layout.mlp_output(h, kernel)


def platform() -> str:
    """The platform the traced program will run on: the installed mesh's devices, else this backend."""
    layout = _LAYOUT.get()
    return jax.default_backend() if layout is None else layout.platform


def split_ways(name: str) -> int:
    """Into how many parts the installed Layout splits a dimension named `name` (1 without one)."""
    layout = _LAYOUT.get()
    return 1 if layout is None else layout.split_ways(name)


def per_shard(fn, args: tuple, in_names: tuple, out_names: tuple):
    """fn(*args) on each device's shard of the arguments, for code the compiler cannot partition
    (a Pallas kernel); without a Layout, fn(*args) on the whole arrays."""
    layout = _LAYOUT.get()
    return fn(*args) if layout is None else layout.per_shard(fn, args, in_names, out_names)


def logical_axes(params_state: nnx.State) -> nnx.State:
    """The axis-name tuple of every parameter, in the same tree as `params_state`.

    Raises if a parameter carries no names, since an unnamed parameter would silently be
    replicated on every device.
    """

    def names_of(path, variable):
        names = variable.get_metadata().get(_METADATA_KEY)
        if not names or len(names) != variable.ndim:
            raise ValueError(
                f"parameter {'.'.join(map(str, path))} of shape {variable.shape} has "
                f"logical axis names {names!r}; expected one name per dimension"
            )
        return tuple(names)

    return nnx.map_state(names_of, params_state)
