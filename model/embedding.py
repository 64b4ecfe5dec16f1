"""Token (and optionally learned position) embeddings, and the tied output projection."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.config import ModelConfig
from meshtrain.model.dtypes import compute_dtype
from meshtrain.model.layers import param, project


class Embed(nnx.Module):
    """The [vocab, embed] table, initialized normal(init_std) like GPT-2/3 and Llama.

    The same small std serves both ends of a tied model: as the output projection it keeps the
    initial logits near zero (loss near ln(vocab)), and as the input it needs no rescaling because
    every block reads the residual stream through a norm.
    """

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = compute_dtype(cfg)
        self.embedding = param(cfg, (cfg.vocab_size, cfg.d_model), (axes.VOCAB, axes.EMBED), rngs)
        self.position_embedding = (
            param(cfg, (cfg.max_seq_len, cfg.d_model), (axes.LENGTH, axes.EMBED), rngs)
            if cfg.positions == "learned"
            else None
        )

    def __call__(self, tokens: jax.Array, positions: jax.Array) -> jax.Array:
        """[batch, length] ids and positions -> [batch, length, embed] in the compute dtype."""
        x = jnp.take(self.embedding[...], tokens, axis=0)
        if self.position_embedding is not None:
            x = x + jnp.take(self.position_embedding[...], positions, axis=0)
        return x.astype(self.dtype)

    def attend(self, x: jax.Array) -> jax.Array:
        """x @ embedding.T: logits of a tied model, accumulated and returned in float32."""
        return project(x, self.embedding[...].astype(x.dtype).T, 1, jnp.float32)
