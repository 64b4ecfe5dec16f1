"""Turns the config's dtype names into JAX dtypes, in one place so every module agrees on them."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from meshtrain.model.config import ModelConfig


def compute_dtype(cfg: ModelConfig, platform: str | None = None) -> jnp.dtype:
    """The dtype activations and matmuls run in on `platform` ('cpu', 'gpu', 'tpu'; default: the
    backend this process runs on). 'auto' picks bfloat16 on accelerators (where it is fast and
    standard) and float32 on CPU. Planning asks it for hardware that is not here, so the live run,
    `meshtrain cost` and `meshtrain compile` agree.

    On CPU float32 is the faster of the two for the default experiment (bfloat16 was 5% slower,
    with its loss within 1.7%: BENCHMARKS.md, "The compute dtype on CPU"); bfloat16 pays off there
    only for larger matmuls (1.28x at d_model 512), which a run asks for with model.dtype=bfloat16."""
    if cfg.dtype != "auto":
        return jnp.dtype(cfg.dtype)
    platform = jax.default_backend() if platform is None else platform
    return jnp.dtype(jnp.float32 if platform == "cpu" else jnp.bfloat16)


def param_dtype(cfg: ModelConfig) -> jnp.dtype:
    """The dtype parameters are stored (and updated by the optimizer) in."""
    return jnp.dtype(cfg.param_dtype)
