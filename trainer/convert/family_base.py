"""What every Hugging Face family is made of: tensor groups with their transforms, the Family base,
config.json helpers, and the Hugging Face shapes derived from the meshtrain ones.

A family is three things: which meshtrain models it can express (`fit_errors`), how its
config.json maps to a ModelConfig and back, and how its tensors map to meshtrain parameters. The
tensor map is a list of groups: a few meshtrain parameters (stacked over layers, or not) and the
Hugging Face tensors of one layer they are made of, with the transform both ways. A group is the
unit of streaming: converting one holds its meshtrain parameters plus one layer's HF tensors.

The transforms are written once, with jnp, so `jax.eval_shape` derives the Hugging Face shapes
every checkpoint must have from the meshtrain ones, and missing or mis-shaped tensors are caught
before anything is written. They only transpose and reshape, so conversions are bit-exact.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import numpy as np

from meshtrain.model.config import ModelConfig
from meshtrain.trainer.errors import UserError

ParamPath = tuple[str, ...]  # a key path into meshtrain's parameter dict, e.g. ("layers", "mlp", "wo", "kernel")


@dataclasses.dataclass(frozen=True)
class TensorGroup:
    """meshtrain parameters <-> the Hugging Face tensors they are made of (per layer when stacked)."""

    params: tuple[ParamPath, ...]
    hf_names: tuple[str, ...]  # with "{i}" standing for the layer index when stacked
    stacked: bool
    to_meshtrain: Callable[..., tuple]  # HF tensors (one layer) -> meshtrain tensors (one layer)
    to_hf: Callable[..., tuple]  # the inverse

    def layers(self, num_layers: int) -> range | list[None]:
        """The layer indices to visit: every layer when stacked, else one visit (None)."""
        return range(num_layers) if self.stacked else [None]

    def hf_names_at(self, layer: int | None) -> tuple[str, ...]:
        return tuple(name.format(i=layer) for name in self.hf_names)


def one(fn):
    """A one-to-one transform as a group transform (tuples in, tuples out)."""
    return lambda x: (fn(x),)


def linear(out_shape: Callable[[ModelConfig], tuple], in_shape: Callable[[ModelConfig], tuple]):
    """torch.nn.Linear weight [out, in] <-> meshtrain kernel [*in_shape, *out_shape] (x @ kernel)."""

    def factory(cfg: ModelConfig):
        ins, outs = in_shape(cfg), out_shape(cfg)
        to_mt = one(lambda w: w.T.reshape(*ins, *outs))
        to_hf = one(lambda k: k.reshape(int(np.prod(ins)), int(np.prod(outs))).T)
        return to_mt, to_hf

    return factory


IDENTITY = (one(lambda x: x), one(lambda x: x))
# Shape shorthands for the tensor tables, as einsum letters: embed, MLP width, query heads, kv heads.
E = lambda c: (c.d_model,)
F = lambda c: (c.d_ff,)
Q = lambda c: (c.num_heads, c.head_dim)
KV = lambda c: (c.num_kv_heads, c.head_dim)


def group(params, hf_names, stacked, transforms) -> TensorGroup:
    return TensorGroup(tuple(tuple(p.split("/")) for p in params), tuple(hf_names), stacked, *transforms)


class Family:
    """One Hugging Face architecture: its name, config mapping and tensor map."""

    architecture: str
    model_type: str
    embedding: str  # the token embedding's tensor name: its dtype is the checkpoint's

    def fit_errors(self, cfg: ModelConfig) -> list[str]:
        raise NotImplementedError

    def model_config(self, hf: dict, base: ModelConfig) -> ModelConfig:
        raise NotImplementedError

    def hf_config(self, cfg: ModelConfig, dtype: str) -> dict:
        raise NotImplementedError

    def groups(self, cfg: ModelConfig) -> list[TensorGroup]:
        raise NotImplementedError

    def ignored(self, name: str, cfg: ModelConfig) -> bool:
        """Tensors some checkpoints carry that are not weights (rotary caches, masks) or duplicate
        one (a tied output matrix saved anyway)."""
        return name.endswith((".rotary_emb.inv_freq", ".attention.bias", ".attention.masked_bias"))


def size(hf: dict, key: str) -> int:
    """A positive integer field of config.json, or an error naming it."""
    value = hf.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"config.json: {key}={value!r}; expected a positive integer")
    return value


def rope_theta(hf: dict, legacy_key: str = "rope_theta") -> tuple[float, float]:
    """(theta, partial rotary factor) from `rope_parameters` (transformers >= 5) or legacy keys."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise UserError(f"config.json: rope_parameters={rope!r}; expected an object")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UserError(
            f"config.json: rope_type {rope_type!r} (rotary scaling) is not supported; "
            f"meshtrain implements rope_type 'default' only"
        )
    theta = rope.get("rope_theta", hf.get(legacy_key, hf.get("rope_theta", 10000.0)))
    fraction = rope.get("partial_rotary_factor", hf.get("rotary_pct", hf.get("partial_rotary_factor", 1.0)))
    return float(theta), float(fraction)


def require(hf: dict, key: str, allowed, meaning: str, default=None):
    value = hf.get(key, default)
    if value not in allowed:
        raise UserError(
            f"config.json: {key}={value!r} is not supported ({meaning}); supported: {', '.join(map(repr, allowed))}"
        )
    return value


def common_hf_config(cfg: ModelConfig, dtype: str) -> dict:
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "tie_word_embeddings": cfg.tie_embeddings,
        "dtype": dtype,
        "torch_dtype": dtype,
        "use_cache": True,
    }


def mismatches(cfg: ModelConfig, wanted: dict) -> list[str]:
    return [
        f"model.{key}={getattr(cfg, key)!r} (needs {' or '.join(map(repr, allowed))})"
        for key, allowed in wanted.items()
        if getattr(cfg, key) not in allowed
    ]


def hf_shapes(group: TensorGroup, param_shapes: dict[ParamPath, tuple[tuple, np.dtype]]) -> list[tuple]:
    """The shapes of one layer's HF tensors for a group, derived from the meshtrain shapes."""
    per_layer = [
        jax.ShapeDtypeStruct(shape[1:] if group.stacked else shape, dtype)
        for shape, dtype in (param_shapes[p] for p in group.params)
    ]
    return [tuple(s.shape) for s in jax.eval_shape(group.to_hf, *per_layer)]


def hf_tensor_shapes(
    groups: list[TensorGroup], param_shapes: dict[ParamPath, tuple[tuple, np.dtype]], num_layers: int
) -> dict[str, tuple]:
    """Every Hugging Face tensor name the groups map to -> its shape, layer by layer."""
    shapes = {}
    for group in groups:
        layer_shapes = hf_shapes(group, param_shapes)
        for layer in group.layers(num_layers):
            shapes.update(zip(group.hf_names_at(layer), layer_shapes))
    return shapes
