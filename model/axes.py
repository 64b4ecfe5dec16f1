"""Logical axis names: the only vocabulary the model uses to say how arrays may be split.

The sharding package maps these names to mesh axes with Flax's logical-rules context
(`flax.linen.logical_axis_rules`); the model itself never mentions a mesh, so the same code runs
unsharded on a CPU and sharded on a pod.
"""

from __future__ import annotations

import flax.linen as nn
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


def constrain(x: jax.Array, names: tuple[str, ...]) -> jax.Array:
    """Asks the compiler to lay out activation `x` along logical axes `names`.

    A no-op unless logical axis rules and a mesh are both active, so single-device runs and tests
    pay nothing for the annotations.
    """
    return nn.with_logical_constraint(x, names)


def logical_axes(params_state: nnx.State) -> nnx.State:
    """The axis-name tuple of every parameter, in the same tree as `params_state`.

    Raises if a parameter carries no names, since an unnamed parameter would silently be
    replicated on every device.
    """

    def names_of(path, variable):
        names = variable.get_metadata().get(_METADATA_KEY)
        if not names or len(names) != variable.ndim:
            raise ValueError(f"parameter {'.'.join(map(str, path))} of shape {variable.shape} has "
                             f"logical axis names {names!r}; expected one name per dimension")
        return tuple(names)

    return nnx.map_state(names_of, params_state)
