"""The building blocks every decoder family shares: named parameters, projections, norms, MLPs."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from meshtrain.model import axes
from meshtrain.model.config import ModelConfig
from meshtrain.model.dtypes import param_dtype


def merges_token_axes(platform: str, length_ways: int) -> bool:
    """Whether `project` merges the token axes: on CPU, when length is split `length_ways` = 1
    ways. The one home of the rule, which the memory model (trainer/planning/memory.py) asks too."""
    return platform == "cpu" and length_ways == 1


def project(x: jax.Array, kernel: jax.Array, contracted: int, out_dtype: jnp.dtype | None = None) -> jax.Array:
    """x's last `contracted` axes against kernel's first ones; on CPU with x's leading (token) axes merged.

    Why merged: XLA's CPU backend lowers a dot to a GEMM with one contracting axis per operand, so
    the weight gradient, which contracts every token (batch and length: two axes), made it
    transpose the activation or its gradient first, in every layer; merged, those transposes are
    gone (BENCHMARKS.md, "Where the CPU step's time goes"). TPU and GPU compilers contract several
    axes in place, so their programs are left as they were. The merge is a free reshape when
    length is not split; under sequence parallelism the merged axis would not be a tiling of the
    devices, so there the axes stay apart.
    """
    lead = x.shape[: x.ndim - contracted]
    if len(lead) > 1 and merges_token_axes(axes.platform(), axes.split_ways(axes.LENGTH)):
        tokens = x.reshape((-1,) + x.shape[len(lead) :])
        y = jnp.tensordot(tokens, kernel, axes=contracted, preferred_element_type=out_dtype)
        return y.reshape(lead + y.shape[1:])
    return jnp.tensordot(x, kernel, axes=contracted, preferred_element_type=out_dtype)


def param(
    cfg: ModelConfig,
    shape: tuple[int, ...],
    names: tuple[str, ...],
    rngs: nnx.Rngs,
    init: nnx.Initializer | None = None,
) -> nnx.Param:
    """A parameter that always carries its logical axis names (default init: normal(init_std)).

    Eager sharding is off: the model only names axes, and the sharding package places parameters
    (from `axes.logical_axes` or `nnx.get_partition_spec` under its rules), so building a model
    needs no mesh.
    """
    init = nnx.with_partitioning(init or nnx.initializers.normal(cfg.init_std), names, eager_sharding=False)
    return nnx.Param(init(rngs.params(), shape, param_dtype(cfg)))


class Dense(nnx.Module):
    """A projection whose kernel keeps the structure of both sides, e.g. query [embed, heads, kv].

    Keeping heads as their own axis (instead of one flat [embed, heads*kv] matrix) lets sharding
    rules split heads without reshapes, and lets converters copy checkpoints axis by axis.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        names: tuple[str, ...],
        *,
        use_bias: bool,
        rngs: nnx.Rngs,
    ):
        self.kernel = param(cfg, in_shape + out_shape, names, rngs)
        self.bias = param(cfg, out_shape, names[len(in_shape) :], rngs, nnx.initializers.zeros) if use_bias else None
        self.contracted = len(in_shape)

    def __call__(self, x: jax.Array, out_dtype: jnp.dtype | None = None) -> jax.Array:
        """Contracts the last len(in_shape) axes of x in x's dtype; out_dtype (default x's) lets the
        output logits accumulate and stay in float32 under bfloat16 compute."""
        y = project(x, self.kernel[...].astype(x.dtype), self.contracted, out_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y


class Norm(nnx.Module):
    """RMSNorm or LayerNorm over the embedding axis, computed in float32 for stability."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.centered = cfg.norm == "layernorm"
        self.eps = cfg.norm_eps
        self.scale = param(cfg, (cfg.d_model,), (axes.EMBED,), rngs, nnx.initializers.ones)
        self.bias = param(cfg, (cfg.d_model,), (axes.EMBED,), rngs, nnx.initializers.zeros) if cfg.use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x.astype(jnp.float32)
        if self.centered:
            y = y - jnp.mean(y, axis=-1, keepdims=True)
        y = y * jax.lax.rsqrt(jnp.mean(jnp.square(y), axis=-1, keepdims=True) + self.eps)
        y = y * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(x.dtype)


class Mlp(nnx.Module):
    """The feed-forward half of a block: SwiGLU (PaLM, Llama) or GELU, tanh-approximated (GPT-2/3,
    Hugging Face "gelu_new") or exact with erf (GPT-NeoX/Pythia, Hugging Face "gelu"): the two differ
    by up to ~5e-4 per activation, enough to matter when loading a checkpoint trained with the other."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        up = dict(
            in_shape=(cfg.d_model,),
            out_shape=(cfg.d_ff,),
            names=(axes.EMBED, axes.MLP),
            use_bias=cfg.use_bias,
            rngs=rngs,
        )
        self.gated = cfg.mlp == "swiglu"
        self.approximate_gelu = cfg.mlp == "gelu"
        if self.gated:
            self.wi_gate = Dense(cfg, **up)
            self.wi_up = Dense(cfg, **up)
        else:
            self.wi = Dense(cfg, **up)
        self.wo = Dense(cfg, (cfg.d_ff,), (cfg.d_model,), (axes.MLP, axes.EMBED), use_bias=cfg.use_bias, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gated:
            h = jax.nn.silu(self.wi_gate(x)) * self.wi_up(x)
        else:
            h = jax.nn.gelu(self.wi(x), approximate=self.approximate_gelu)
        h = axes.constrain(h, (axes.BATCH, axes.LENGTH, axes.MLP))
        kernel = self.wo.kernel[...].astype(h.dtype)
        y = axes.collective_mlp_output(h, kernel)
        if y is None:
            y = project(h, kernel, 1)
        if self.wo.bias is not None:
            y = y + self.wo.bias[...].astype(y.dtype)
        return y
