"""The decoder: embeddings, a stack of identical blocks applied by scan, final norm, logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from model import axes
from model.attention import attention_mask
from model.block import Block
from model.config import ModelConfig, model_config_errors
from model.embedding import Embed
from model.layers import Dense, Norm

# save_dots keeps the outputs of matmuls without batch dimensions, i.e. the weight projections
# (O(batch*length*width) memory each), and recomputes the attention scores and probabilities,
# whose einsums do have batch dimensions and whose [heads, length, length] size would dominate
# memory; dots_saveable would keep those too. This is MaxText's "minimal" policy.
REMAT_POLICIES = {
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
    """A decoder-only transformer; `__call__(tokens, positions, segment_ids)` returns float32 logits."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        errors = model_config_errors(cfg)
        if errors:
            raise ValueError("invalid model config: " + "; ".join(
                f"{key}={value!r} must be {valid}" for key, value, valid in errors))
        self.cfg = cfg
        self.embed = Embed(cfg, rngs=rngs)
        self.layers = stacked_blocks(cfg, rngs)
        self.final_norm = Norm(cfg, rngs=rngs)
        self.unembed = (None if cfg.tie_embeddings else
                        Dense(cfg, (cfg.d_model,), (cfg.vocab_size,), (axes.EMBED, axes.VOCAB),
                              use_bias=False, rngs=rngs))

    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array) -> jax.Array:
        """tokens, positions, segment_ids: int [batch, length] -> logits float32 [batch, length, vocab].

        positions restart at 0 in every packed document; segment_ids number the documents of a row
        (0 = padding), and attention never crosses from one to another.
        """
        x = axes.constrain(self.embed(tokens, positions), (axes.BATCH, axes.LENGTH, axes.EMBED))
        x = self._apply_layers(x, positions, attention_mask(segment_ids))
        x = self.final_norm(x)
        if self.unembed is None:
            logits = self.embed.attend(x)
        else:
            logits = self.unembed(x, out_dtype=jnp.float32)
        return axes.constrain(logits, (axes.BATCH, axes.LENGTH, axes.VOCAB))

    def _apply_layers(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        """Runs the stacked blocks, scanned or unrolled over the same [layers, ...] parameters."""
        graphdef, stacked = nnx.split(self.layers)

        def layer(x, params):
            return nnx.merge(graphdef, params)(x, positions, mask), None

        if self.cfg.remat != "none":
            # Inside scan, CSE cannot merge the recomputation into the forward pass, so the guard
            # against it is only needed (and only costs) when unrolled.
            layer = jax.checkpoint(layer, policy=REMAT_POLICIES[self.cfg.remat],
                                   prevent_cse=not self.cfg.scan_layers)
        if self.cfg.scan_layers:
            return jax.lax.scan(layer, x, stacked)[0]
        for i in range(self.cfg.num_layers):
            x, _ = layer(x, jax.tree.map(lambda p, i=i: p[i], stacked))
        return x
