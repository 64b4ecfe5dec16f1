"""Rotary position embeddings (Su et al. 2021), in the Hugging Face Llama / GPT-NeoX layout.

That layout rotates dimension i together with i + rotary_dims/2 (first half against second half),
rather than adjacent pairs, so checkpoints convert from and to Hugging Face without permuting
the query and key kernels. GPT-NeoX (Pythia) rotates only the leading rotary_dims of each head and
passes the rest through, which is what rotary_dims < head_dim reproduces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float, rotary_dims: int | None = None) -> jax.Array:
    """Rotates x [batch, length, heads, head_dim] by angles positions [batch, length] * frequencies.

    Only x[..., :rotary_dims] (default: all of head_dim) is rotated, with frequencies spaced over
    rotary_dims as in GPT-NeoX; the remaining dimensions come back unchanged. Positions come in
    explicitly (not as arange) so packed documents restart at 0. Angles are computed in float32:
    bfloat16 cannot represent positions above 256 exactly.
    """
    rotary_dims = x.shape[-1] if rotary_dims is None else rotary_dims
    half = rotary_dims // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / rotary_dims)
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [batch, length, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x[..., :rotary_dims].astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)
    if rotary_dims == x.shape[-1]:
        return rotated
    return jnp.concatenate([rotated, x[..., rotary_dims:]], axis=-1)
