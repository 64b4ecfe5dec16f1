"""One decoder layer: attention and MLP around pre-norms, in PaLM's parallel or the usual sequential form."""

from __future__ import annotations

import jax
from flax import nnx

from model import axes
from model.attention import Attention
from model.config import ModelConfig
from model.layers import Mlp, Norm


class Block(nnx.Module):
    """parallel: x + attn(norm(x)) + mlp(norm(x)) with one norm (PaLM; ~15% faster at scale because
    the two input matmuls fuse); sequential: x + attn(norm1(x)), then + mlp(norm2(.)) (Llama, GPT)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pre_norm = Norm(cfg, rngs=rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(cfg, rngs=rngs) if cfg.block == "sequential" else None
        self.mlp = Mlp(cfg, rngs=rngs)

    def __call__(self, x: jax.Array, positions: jax.Array, mask: jax.Array) -> jax.Array:
        h = self.pre_norm(x)
        if self.mlp_norm is None:
            x = x + self.attention(h, positions, mask) + self.mlp(h)
        else:
            x = x + self.attention(h, positions, mask)
            x = x + self.mlp(self.mlp_norm(x))
        return axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED))
