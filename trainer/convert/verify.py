"""--verify: run the source and the converted model on the same tokens and compare their logits.

Both sides run in float32 whatever their storage dtype, so the comparison shows what the
conversion itself changed (nothing, for a same-dtype conversion, beyond summation order; the
rounding, for a cast). The Hugging Face side runs in transformers (imported only here, and only
when a Hugging Face model is involved); the meshtrain side runs the Decoder.
"""

from __future__ import annotations

from pathlib import Path

import jax.numpy as jnp
import numpy as np

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.saved_weights import SavedCheckpoint, load_decoder

SAMPLE_LENGTH = 64
SAMPLE_ROWS = 2


def sample_tokens(vocab_size: int, max_len: int, seed: int = 0) -> np.ndarray:
    """Fixed random token ids [rows, length]: every row covers many positions and vocabulary rows."""
    length = min(SAMPLE_LENGTH, max_len)
    return np.random.default_rng(seed).integers(0, vocab_size, (SAMPLE_ROWS, length), dtype=np.int32)


def meshtrain_logits(saved: SavedCheckpoint, tokens: np.ndarray) -> np.ndarray:
    """float32 logits of a meshtrain checkpoint on `tokens` (one device; conversion-sized models)."""
    from flax import nnx

    model = load_decoder(saved, compute_dtype="float32")
    positions = np.broadcast_to(np.arange(tokens.shape[1], dtype=np.int32), tokens.shape)
    logits = nnx.jit(lambda m, t, p: m(t, p, jnp.ones_like(t)))(model, tokens, positions)
    return np.asarray(logits, np.float32)


def hf_logits(directory: Path, tokens: np.ndarray) -> np.ndarray:
    """float32 logits of a Hugging Face model directory, computed by transformers."""
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError as error:
        raise UserError(
            f"--verify with a Hugging Face side needs torch and transformers ({error}); pip install torch transformers"
        ) from None
    model = AutoModelForCausalLM.from_pretrained(directory, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(tokens.astype(np.int64))).logits.float().numpy()


def compare_logits(reference: np.ndarray, converted: np.ndarray) -> dict:
    """max |difference| and the mean KL(reference || converted) of the next-token distributions."""
    reference, converted = reference.astype(np.float64), converted.astype(np.float64)
    log_p = reference - _logsumexp(reference)
    log_q = converted - _logsumexp(converted)
    kl = np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)
    return {
        "max_abs_logit_diff": float(np.max(np.abs(reference - converted))),
        "kl_divergence": float(np.mean(kl)),
        "max_abs_logit": float(np.max(np.abs(reference))),
        "tokens_compared": int(np.prod(reference.shape[:-1])),
    }


def _logsumexp(x: np.ndarray) -> np.ndarray:
    top = np.max(x, axis=-1, keepdims=True)
    return top + np.log(np.sum(np.exp(x - top), axis=-1, keepdims=True))
