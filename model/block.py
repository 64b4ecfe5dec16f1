"""One decoder layer: attention and MLP around pre-norms, in a parallel or the usual sequential form."""

from __future__ import annotations

import jax
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.attention import Attention
from meshtrain.model.config import ModelConfig
from meshtrain.model.kv_cache import KVCache
from meshtrain.model.layers import Mlp, Norm


class Block(nnx.Module):
    """parallel: x + attn(norm(x)) + mlp(norm(x)) with one norm (PaLM, GPT-J; ~15% faster at scale
    because the two input matmuls fuse); parallel_two_norms: x + attn(pre_norm(x)) + mlp(mlp_norm(x))
    (GPT-NeoX/Pythia's use_parallel_residual); sequential: x + attn(pre_norm(x)), then
    + mlp(mlp_norm(.)) (Llama, GPT). The attention norm is always pre_norm and the MLP's own norm
    always mlp_norm, so checkpoints convert by the same names whichever form."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.pre_norm = Norm(cfg, rngs=rngs)
        self.attention = Attention(cfg, rngs=rngs)
        self.mlp_norm = Norm(cfg, rngs=rngs) if cfg.block != "parallel" else None
        self.mlp = Mlp(cfg, rngs=rngs)
        self.sequential = cfg.block == "sequential"

    def __call__(
        self, x: jax.Array, positions: jax.Array, mask: jax.Array, cache: KVCache | None = None
    ) -> tuple[jax.Array, KVCache | None]:
        """Returns (output, cache); the cache (decoding only) is the attention's, see Attention."""
        h = self.pre_norm(x)
        attended, cache = self.attention(h, positions, mask, cache)
        if self.sequential:
            x = x + attended
            x = x + self.mlp(self.mlp_norm(x))
        else:
            x = x + attended + self.mlp(h if self.mlp_norm is None else self.mlp_norm(x))
        return axes.constrain(x, (axes.BATCH, axes.LENGTH, axes.EMBED)), cache
