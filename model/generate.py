"""Greedy decoding with a KV cache, as one compiled program.

Rerunning the forward pass on the growing sequence costs O(n^2) attention work for each new token;
with the cache (model/kv_cache.py) each step projects one token and scores it against the n cached
keys, O(n). The prompt is prefilled in one pass and the steps run in a lax.scan, so the whole
generation is one jitted program with fixed shapes (the cache is sized for prompt + new tokens up
front) instead of a Python loop dispatching and recompiling per length.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from meshtrain.model.decoder import Decoder
from meshtrain.model.kv_cache import init_cache


def greedy_generate(model: Decoder, prompt: jax.Array, max_new_tokens: int) -> jax.Array:
    """The max_new_tokens tokens (int32 [batch, max_new_tokens]) that follow prompt (int [batch, P],
    every row a full prompt at positions 0..P-1), each the argmax of the logits before it."""
    prompt_len = prompt.shape[1]
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be at least 1")
    cfg = model.cfg
    if cfg.positions == "learned" and prompt_len + max_new_tokens > cfg.max_seq_len:
        # jnp.take would silently clamp positions past the table instead of failing.
        raise ValueError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) exceeds "
            f"max_seq_len={cfg.max_seq_len}, the rows of the learned position table"
        )
    return _greedy(model, prompt.astype(jnp.int32), max_new_tokens)


@functools.partial(nnx.jit, static_argnums=2)
def _greedy(model: Decoder, prompt: jax.Array, max_new_tokens: int) -> jax.Array:
    batch, prompt_len = prompt.shape
    cache = init_cache(model.cfg, batch, prompt_len + max_new_tokens)
    positions = jnp.broadcast_to(jnp.arange(prompt_len), (batch, prompt_len))
    logits, cache = model.decode(prompt, positions, cache)
    first = jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32)

    def step(carry, position):
        """Feeds the token at `position`, emits it, and carries the one after it."""
        token, cache = carry
        logits, cache = model.decode(token[:, None], jnp.full((batch, 1), position), cache)
        return (jnp.argmax(logits[:, -1], axis=-1).astype(jnp.int32), cache), token

    # max_new_tokens - 1 steps: the last token is chosen but never needs to be fed back.
    (last, _), fed = jax.lax.scan(step, (first, cache), jnp.arange(prompt_len, prompt_len + max_new_tokens - 1))
    return jnp.concatenate([fed.T, last[:, None]], axis=1)
