"""Keys and values of the tokens decoded so far, so each new token attends to them without recomputing.

Without a cache, generating token n reruns the forward pass over all n tokens: O(n) projections and
O(n^2) attention scores per new token. With one, a step projects only the new token and scores it
against the n stored keys: O(1) projections and O(n) scores.
The cache has a fixed length (max_len slots) so that every decoding step compiles to one program;
a query at position p sees slots 0..p, and the slots not yet written stay invisible.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from meshtrain.model.config import ModelConfig
from meshtrain.model.dtypes import compute_dtype


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class KVCache:
    """keys, values: [batch, max_len, kv_heads, head_dim] for one layer, with a leading layers axis
    when it belongs to the whole decoder (the decoder scans it together with the stacked blocks)."""

    keys: jax.Array
    values: jax.Array

    @property
    def max_len(self) -> int:
        return self.keys.shape[-3]

    def update(self, keys: jax.Array, values: jax.Array, start: jax.Array) -> KVCache:
        """One layer's cache with keys, values [batch, T, kv_heads, head_dim] written to slots
        start..start+T-1 (cast to the cache's dtype). dynamic_update_slice clamps a start that
        would run past max_len, so callers size the cache for the whole sequence."""

        def write(cache: jax.Array, new: jax.Array) -> jax.Array:
            return jax.lax.dynamic_update_slice(cache, new.astype(cache.dtype), (0, start, 0, 0))

        return KVCache(write(self.keys, keys), write(self.values, values))


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype: jnp.dtype | None = None) -> KVCache:
    """An empty (zero) cache for every layer: [layers, batch, max_len, kv_heads, head_dim] in `dtype`
    (default: the compute dtype). Under multi-query or grouped-query attention it holds num_kv_heads
    heads, not num_heads: the memory saving those layouts exist for."""
    shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
    dtype = compute_dtype(cfg) if dtype is None else dtype
    return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def cache_mask(positions: jax.Array, max_len: int) -> jax.Array:
    """[batch, T, max_len] booleans: slot s is visible from the query at position p when s <= p.

    Slot s holds the token at position s, so this is the causal mask over the cache; slots beyond
    the query (unwritten, or written by a later token) are hidden.
    """
    return jnp.arange(max_len)[None, None, :] <= positions[:, :, None]
