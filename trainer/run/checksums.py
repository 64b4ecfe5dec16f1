"""Checksums of a train state's arrays, computed on the devices where the arrays live.

Orbax verifies a checkpoint's structure but not its bytes: a data file overwritten in place (same
size) restores silently, and a few flipped exponent bits turn Adam moments into 1e38. So every
checkpoint stores, per array, two 32-bit sums of its raw bits, a Fletcher-style pair:

    plain = sum(w_i)             weighted = sum((i + 1) * w_i)        (mod 2**32)

over the array's words w_i (its elements bitcast to unsigned integers) at flat index i. Integer
sums mod 2**32 do not depend on the order of addition, so the pair is the same whichever mesh
holds the array (a checkpoint restored onto another layout verifies against the same numbers),
and it is computed inside one jitted program as a reduction over the shards: no array is gathered,
to a host or to a device. The flat index is built from one iota per axis rather than by flattening
the array, which for an array split along an inner axis is no tiling of the devices: flattened,
XLA gathered such arrays whole onto every device, 2.9 GiB of temporaries per device for a 1.4 GiB
state split 8 ways (on a pod: multi-GB stacked weights on every chip). Any change of one word changes
`plain`; swapped words change `weighted`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}
_MAX_GROUP, _MIN_GROUP = 32, 8  # words summed together in the first stage (see _group)


def _words(x: jax.Array) -> jax.Array:
    """The raw bits of x as uint32 words (8-byte elements become two words each)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])
    return bits.astype(jnp.uint32)


def _flat_index(shape: tuple[int, ...]) -> jax.Array:
    """The row-major flat index of every position of an array of `shape`, as uint32 (mod 2**32),
    built from one iota per axis: no reshape, so a sharded array stays in its own layout."""
    index = jnp.zeros(shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def _group(x) -> int:
    """How many words along the last axis the first stage of _pair sums together: the largest
    divisor of the last axis's per-device length up to _MAX_GROUP, so that the groups never cross
    a shard boundary (a reshape that does is no tiling of the devices, and XLA would move the
    array to make it one). 1 (no grouping) when that divisor is under _MIN_GROUP, and for keys and
    8-byte elements, whose words add an axis of their own."""
    if x.ndim == 0 or jnp.issubdtype(x.dtype, jax.dtypes.prng_key) or x.dtype.itemsize == 8:
        return 1
    sharding = getattr(x, "sharding", None)
    local = sharding.shard_shape(x.shape)[-1] if sharding is not None else x.shape[-1]
    group = max(d for d in range(1, _MAX_GROUP + 1) if local % d == 0)
    return group if group >= _MIN_GROUP and group < x.shape[-1] else 1


def _pair(x: jax.Array, group: int) -> jax.Array:
    """[plain, weighted] of x's words, the first stage summing `group` words at a time (see _group).

    Why two stages: XLA's CPU backend rewrites one large reduction into a tree of reduce-windows
    that cannot fuse their input, so the bitcast words and their weighted products were each
    written out whole before being summed (1.4 GiB/s). Groups of a few words, kept apart from the
    second stage by an optimization barrier, are summed straight from the array with everything
    fused: 5x faster on a 1.4 GiB state (BENCHMARKS.md, "Checkpoints against the disk"). The
    partial sums take 1/group of the array.
    """
    words = _words(x)
    if words.ndim == 0:
        words = words.reshape(1)
    plain, weighted = words, words * (_flat_index(words.shape) + jnp.uint32(1))
    if group > 1:
        grouped = words.shape[:-1] + (words.shape[-1] // group, group)
        plain = jnp.sum(plain.reshape(grouped), axis=-1, dtype=jnp.uint32)
        weighted = jnp.sum(weighted.reshape(grouped), axis=-1, dtype=jnp.uint32)
        plain, weighted = jax.lax.optimization_barrier((plain, weighted))
    return jnp.stack([jnp.sum(plain, dtype=jnp.uint32), jnp.sum(weighted, dtype=jnp.uint32)])


_sum_leaves = jax.jit(lambda leaves, groups: [_pair(x, g) for x, g in zip(leaves, groups)], static_argnums=1)


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def _leaves_and_groups(state) -> tuple[list, tuple[int, ...], object]:
    """The program's arguments for `state`: its leaves, each one's group (static) and the tree."""
    leaves, tree = jax.tree.flatten(state)
    return leaves, tuple(_group(x) for x in leaves), tree


def lower_checksums(state) -> jax.stages.Lowered:
    """The program start_checksums runs for `state` (arrays, or ShapeDtypeStructs with shardings),
    lowered: to inspect what it costs (tests/test_checksums.py holds its temporaries to a small
    fraction of the state's per-device share: each device sums its own shards)."""
    return _sum_leaves.lower(*_leaves_and_groups(state)[:2])


def start_checksums(state):
    """Dispatches the sums of every array in `state` and returns at once (a collective on many
    processes): the result is a tree of device arrays that `checksums_json` turns into numbers,
    waiting for them. A checkpoint save starts them here and reads them in its background thread,
    so the training loop never waits for a pass over the whole state."""
    leaves, groups, tree = _leaves_and_groups(state)
    return jax.tree.unflatten(tree, _sum_leaves(leaves, groups))


def checksums_json(pairs) -> dict[str, list[int]]:
    """{array path: [plain, weighted]} of what `start_checksums` returned (waits for the sums)."""
    flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(pairs))
    return {_path_name(path): [int(v) for v in np.asarray(value)] for path, value in flat}


def array_checksums(state) -> dict[str, list[int]]:
    """{array path: [plain, weighted]} of every array in `state` (a collective on many processes)."""
    return checksums_json(start_checksums(state))


def mismatches(expected: dict[str, list[int]], state) -> list[str]:
    """Paths whose checksum differs from `expected` (or that one side lacks)."""
    actual = array_checksums(state)
    return sorted(k for k in expected.keys() | actual.keys() if expected.get(k) != actual.get(k))
