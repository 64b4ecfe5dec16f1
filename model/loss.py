"""Next-token cross-entropy with PaLM's z-loss, averaged over the tokens that count."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def cross_entropy_loss(
    logits: jax.Array, targets: jax.Array, weights: jax.Array, z_loss: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (loss, aux) for logits [..., vocab], integer targets [...] and weights [...].

    loss = sum(weights * (ce + z_loss * logsumexp^2)) / max(sum(weights), 1). The z-loss term pulls
    log Z towards 0, which PaLM found keeps bfloat16 logits stable. Weights are 0 on padding and on
    the last token of each document; the max(., 1) keeps an all-padding batch at loss 0, not NaN.
    aux: `ce` (the weighted mean cross-entropy alone, the number to compare across runs), `z_loss`
    (the weighted mean of the z-loss term) and `tokens` (sum of weights), all float32.
    """
    logits = logits.astype(jnp.float32)
    weights = weights.astype(jnp.float32)
    log_z = jax.nn.logsumexp(logits, axis=-1)
    target_logits = jnp.take_along_axis(logits, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    tokens = jnp.sum(weights)
    denominator = jnp.maximum(tokens, 1.0)
    ce = jnp.sum(weights * (log_z - target_logits)) / denominator
    z_term = z_loss * jnp.sum(weights * jnp.square(log_z)) / denominator
    return ce + z_term, {"ce": ce, "z_loss": z_term, "tokens": tokens}
