"""The decoder: embeddings, a stack of identical blocks applied by scan, final norm, logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.attention import attention_mask
from meshtrain.model.attention_kernels import attention_kernel
from meshtrain.model.block import Block
from meshtrain.model.config import ModelConfig, model_config_errors
from meshtrain.model.embedding import Embed
from meshtrain.model.kv_cache import KVCache, cache_mask
from meshtrain.model.layers import Dense, Norm

# save_dots keeps the outputs of matmuls without batch dimensions, i.e. the weight projections
# (O(batch*length*width) memory each), and recomputes the attention scores and probabilities,
# whose einsums do have batch dimensions and whose [heads, length, length] size would dominate
# memory; dots_saveable would keep those too. This is MaxText's "minimal" policy.
CHECKPOINT_POLICIES = {  # model.remat -> what jax.checkpoint saves (config.REMAT_POLICIES names them)
    "full": None,  # save nothing but the block's input: recompute the whole block in the backward pass
    "save_dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
    """num_layers blocks as one Block whose parameters have a leading `layers` axis.

    One stacked module (rather than a list) is what lets the forward pass scan, so compile time
    does not grow with depth; each layer still gets its own random init.
    """

    @nnx.split_rngs(splits=cfg.num_layers)
    @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
    def create(rngs: nnx.Rngs) -> Block:
        return Block(cfg, rngs=rngs)

    return create(rngs)


class Decoder(nnx.Module):
    """A decoder-only transformer; `__call__(tokens, positions, segment_ids)` returns float32 logits
    for training, `decode(tokens, positions, cache)` the same logits a few tokens at a time."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        errors = model_config_errors(cfg)
        if errors:
            raise ValueError(
                "invalid model config: " + "; ".join(f"{key}={value!r} must be {valid}" for key, value, valid in errors)
            )
        self.cfg = cfg
        self.embed = Embed(cfg, rngs=rngs)
        self.layers = stacked_blocks(cfg, rngs)
        self.final_norm = Norm(cfg, rngs=rngs)
        self.unembed = (
            None
            if cfg.tie_embeddings
            else Dense(cfg, (cfg.d_model,), (cfg.vocab_size,), (axes.EMBED, axes.VOCAB), use_bias=False, rngs=rngs)
        )

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """tokens, positions, segment_ids: int [batch, length] -> logits float32 [batch, length, vocab].

        positions restart at 0 in every packed document; segment_ids number the documents of a row
        (0 = padding), and attention never crosses from one to another.
        """
        x = axes.constrain(self.embed(tokens, positions), (axes.BATCH, axes.LENGTH, axes.EMBED))
        # dot_product takes the mask built here once for every layer; a fused kernel builds its own
        # from the segment ids, block by block.
        dense = attention_kernel(self.cfg.attention, axes.platform(), tokens.shape[1]) == "dot_product"
        x, _ = self._apply_layers(x, positions, attention_mask(segment_ids) if dense else segment_ids)
        return self._logits(x)

    def decode(self, tokens: jax.Array, positions: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Runs T new tokens against a cache: (logits float32 [batch, T, vocab], the updated cache).

        tokens, positions: int [batch, T], positions absolute and the same in every row (a whole
        prompt to prefill, then one token per step). Their keys and values are written at cache slots
        positions[0, 0]..+T and each query attends to the slots at or before its position, so the
        logits equal those of __call__ on the whole sequence. The same blocks run as in training,
        with each layer's slice of the stacked cache scanned alongside its parameters.
        """
        x = self.embed(tokens, positions)
        x, cache = self._apply_layers(x, positions, cache_mask(positions, cache.max_len), cache)
        return self._logits(x), cache

    def _logits(self, x: jax.Array) -> jax.Array:
        x = self.final_norm(x)
        if self.unembed is None:
            logits = self.embed.attend(x)
        else:
            logits = self.unembed(x, out_dtype=jnp.float32)
        return axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))

    def _apply_layers(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        """Runs the stacked blocks, scanned or unrolled over the same [layers, ...] parameters (and
        cache, when decoding); returns the output and the updated cache (None in training)."""
        graphdef, stacked = nnx.split(self.layers)

        def layer(x, params_and_cache):
            params, layer_cache = params_and_cache
            return nnx.merge(graphdef, params)(x, positions, mask, layer_cache)

        if self.cfg.remat != "none":
            # Inside scan, CSE cannot merge the recomputation into the forward pass, so the guard
            # against it is only needed (and only costs) when unrolled.
            layer = jax.checkpoint(
                layer, policy=CHECKPOINT_POLICIES[self.cfg.remat], prevent_cse=not self.cfg.scan_layers
            )
        if self.cfg.scan_layers:
            return jax.lax.scan(layer, x, (stacked, cache))
        caches = []
        for i in range(self.cfg.num_layers):
            x, layer_cache = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, cache)))
            caches.append(layer_cache)
        return x, jax.tree.map(lambda *layers: jnp.stack(layers), *caches)
