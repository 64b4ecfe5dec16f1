"""Causal self-attention over packed rows, with any number of key/value heads from 1 to num_heads.

One code path covers multi-head (Llama 2 7B, GPT-3), grouped-query and multi-query (PaLM)
attention: queries are grouped as [batch, length, kv_heads, group, head_dim] so each key/value head
is read by its group of query heads without copying keys and values.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.attention_kernels import attention_kernel, fused_attention
from meshtrain.model.config import ModelConfig
from meshtrain.model.kv_cache import KVCache
from meshtrain.model.layers import Dense
from meshtrain.model.rope import apply_rope


def attention_mask(segment_ids: jax.Array) -> jax.Array:
    """[batch, query, key] booleans: key j is visible from query i when j <= i in the same segment.

    Segment 0 marks padding; padding tokens see only earlier padding, and every token sees at least
    itself, so no row of the softmax is empty and padding cannot produce NaNs.
    """
    length = segment_ids.shape[-1]
    causal = jnp.tril(jnp.ones((length, length), dtype=bool))
    same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
    return causal[None] & same_segment


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """softmax(q k^T / sqrt(head_dim)) v with q [B, T, H, D], k and v [B, S, Hkv, D], mask [B, T, S].

    Scores and softmax are float32 whatever the compute dtype: bfloat16 logits lose the small
    differences that decide long-range attention. Query head h reads key/value head h // group,
    the same assignment as Hugging Face's repeat_kv.

    Heads go first ([B, Hkv, group, T, D]) before the two einsums, so every matmul of the forward
    and backward passes has its batch axes leading and the [T, S] scores are never transposed:
    XLA's CPU backend otherwise copied two score-sized arrays per layer in the backward pass,
    1.34x slower attention (BENCHMARKS.md, "Where the CPU step's time goes"). Only q, k and v
    (S x D each) are transposed.
    """
    batch, length, heads, head_dim = q.shape
    kv_heads = k.shape[2]
    q = q.reshape(batch, length, kv_heads, heads // kv_heads, head_dim).transpose(0, 2, 3, 1, 4)
    k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
    scores = jnp.einsum("bkgtd,bksd->bkgts", q, k, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(head_dim)
    scores = jnp.where(mask[:, None, None], scores, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bksd->bkgtd", probs, v)
    return out.transpose(0, 3, 1, 2, 4).reshape(batch, length, heads, head_dim)


QUERY_BLOCK = 256  # queries per block of causal_attention


def causal_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """dot_product_attention for a mask that is causal (training's: q, k and v of the same tokens),
    by blocks of QUERY_BLOCK queries, each against only the keys up to its last query.

    The keys after a block are masked out for all of its queries, so leaving them out changes no
    value and skips their scores: at T=512 a quarter of the work, at T=2048 44%; on this CPU the
    attention's forward and backward passes are 1.3x faster at T=512. Rows shorter than two
    blocks, or whose length axis is split (sequence parallelism: the blocks would cut across
    devices), take the one-block path.
    """
    length = q.shape[1]
    if length < 2 * QUERY_BLOCK or length % QUERY_BLOCK or axes.split_ways(axes.LENGTH) > 1:
        return dot_product_attention(q, k, v, mask)
    blocks = []
    for start in range(0, length, QUERY_BLOCK):
        end = start + QUERY_BLOCK
        blocks.append(dot_product_attention(q[:, start:end], k[:, :end], v[:, :end], mask[:, start:end, :end]))
    return jnp.concatenate(blocks, axis=1)


class Attention(nnx.Module):
    """Query, key, value and output projections around dot_product_attention or a fused kernel
    (model.attention, model/attention_kernels.py)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        e, h, hkv, d = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        kv_names = (axes.EMBED, axes.KV_HEADS, axes.KV)
        self.query = Dense(cfg, (e,), (h, d), (axes.EMBED, axes.HEADS, axes.KV), use_bias=cfg.use_bias, rngs=rngs)
        self.key = Dense(cfg, (e,), (hkv, d), kv_names, use_bias=cfg.use_bias, rngs=rngs)
        self.value = Dense(cfg, (e,), (hkv, d), kv_names, use_bias=cfg.use_bias, rngs=rngs)
        self.out = Dense(cfg, (h, d), (e,), (axes.HEADS, axes.KV, axes.EMBED), use_bias=cfg.use_bias, rngs=rngs)
        self.rope_theta = cfg.rope_theta if cfg.positions == "rope" else None
        self.rotary_dims = cfg.rotary_dims
        self.kernel = cfg.attention

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        """Returns (output, cache). Training passes no cache: keys and values are the ones of x and
        mask is [batch, T, T], or for a fused kernel the segment ids [batch, T]. Decoding passes
        this layer's cache: the new (rotated) keys and values are written at slots
        positions[0, 0].., the queries attend to the whole cache, and mask is [batch, T, max_len];
        the updated cache comes back."""
        q, k, v = self.query(x), self.key(x), self.value(x)
        if self.rope_theta is not None:
            q = apply_rope(q, positions, self.rope_theta, self.rotary_dims)
            k = apply_rope(k, positions, self.rope_theta, self.rotary_dims)
        if cache is not None:
            cache = cache.update(k, v, positions[0, 0])
            k, v = cache.keys, cache.values
        # Keys and values are left to follow their kernels' layout: with one key/value head
        # (multi-query) their head axis cannot be split like the query heads.
        head_axes = (axes.BATCH, axes.LENGTH, axes.HEADS, axes.KV)
        q = axes.constrain(q, head_axes)
        if mask.ndim == 2:  # segment ids: the decoder chose a fused kernel
            out = fused_attention(attention_kernel(self.kernel, axes.platform(), q.shape[1]), q, k, v, mask)
        elif cache is None:
            out = causal_attention(q, k, v, mask)
        else:
            out = dot_product_attention(q, k, v, mask)
        out = axes.constrain(out, head_axes)
        return self.out(out), cache
