"""Checksums of a train state's arrays, computed on the devices where the arrays live.

Orbax verifies a checkpoint's structure but not its bytes: a data file overwritten in place (same
size) restores silently, and a few flipped exponent bits turn Adam moments into 1e38. So every
checkpoint stores, per array, two 32-bit sums of its raw bits, a Fletcher-style pair:

    plain = sum(w_i)             weighted = sum((i + 1) * w_i)        (mod 2**32)

over the array's words w_i (its elements bitcast to unsigned integers) at flat index i. Integer
sums mod 2**32 do not depend on the order of addition, so the pair is the same whichever mesh
holds the array (a checkpoint restored onto another layout verifies against the same numbers),
and it is computed inside one jitted program as a reduction over the shards: no array is gathered
to a host. Any change of one word changes `plain`; swapped words change `weighted`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_UNSIGNED = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


def _words(x: jax.Array) -> jax.Array:
    """The raw bits of x as uint32 words (8-byte elements become two words each)."""
    if x.dtype == jnp.bool_:
        x = x.astype(jnp.uint8)
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    bits = jax.lax.bitcast_convert_type(x, _UNSIGNED[x.dtype.itemsize])
    return bits.astype(jnp.uint32)


def _pair(x: jax.Array) -> jax.Array:
    words = _words(x).reshape(-1)
    index = jax.lax.iota(jnp.uint32, words.shape[0]) + jnp.uint32(1)
    return jnp.stack([jnp.sum(words, dtype=jnp.uint32), jnp.sum(words * index, dtype=jnp.uint32)])


_pairs = jax.jit(lambda tree: jax.tree.map(_pair, tree))


def _path_name(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)


def start_checksums(state):
    """Dispatches the sums of every array in `state` and returns at once (a collective on many
    processes): the result is a tree of device arrays that `checksums_json` turns into numbers,
    waiting for them. A checkpoint save starts them here and reads them in its background thread,
    so the training loop never waits for a pass over the whole state."""
    return _pairs(state)


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
