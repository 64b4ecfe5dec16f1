"""Turns the config's dtype names into JAX dtypes, in one place so every module agrees on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from model.config import ModelConfig


def compute_dtype(cfg: ModelConfig) -> jnp.dtype:
    """The dtype activations and matmuls run in; 'auto' picks bfloat16 on accelerators (where it is
    fast and standard) and float32 on CPU (where bfloat16 is slow and only tests run)."""
    if cfg.dtype == "auto":
        return jnp.dtype(jnp.bfloat16 if jax.default_backend() != "cpu" else jnp.float32)
    return jnp.dtype(cfg.dtype)


def param_dtype(cfg: ModelConfig) -> jnp.dtype:
    """The dtype parameters are stored (and updated by the optimizer) in."""
    return jnp.dtype(cfg.param_dtype)
