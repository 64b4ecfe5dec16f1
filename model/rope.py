"""Rotary position embeddings (Su et al. 2021), in the Hugging Face Llama / GPT-NeoX layout.

That layout rotates dimension i together with i + head_dim/2 (first half against second half),
rather than adjacent pairs, so checkpoints convert from and to Hugging Face without permuting
the query and key kernels.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
    """Rotates x [batch, length, heads, head_dim] by angles positions [batch, length] * frequencies.

    Positions come in explicitly (not as arange) so packed documents restart at 0. Angles are
    computed in float32: bfloat16 cannot represent positions above 256 exactly.
    """
    half = x.shape[-1] // 2
    inv_freq = 1.0 / theta ** (jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angles = positions.astype(jnp.float32)[..., None, None] * inv_freq  # [batch, length, 1, half]
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x.dtype)
