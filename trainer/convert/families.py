"""How meshtrain models correspond to Hugging Face's LlamaForCausalLM and GPTNeoXForCausalLM.

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
import jax.numpy as jnp
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
    to_hf: Callable[..., tuple]         # the inverse

    def layers(self, num_layers: int) -> range | list[None]:
        """The layer indices to visit: every layer when stacked, else one visit (None)."""
        return range(num_layers) if self.stacked else [None]

    def hf_names_at(self, layer: int | None) -> tuple[str, ...]:
        return tuple(name.format(i=layer) for name in self.hf_names)


def _one(fn):
    """A one-to-one transform as a group transform (tuples in, tuples out)."""
    return lambda x: (fn(x),)


def _linear(out_shape: Callable[[ModelConfig], tuple], in_shape: Callable[[ModelConfig], tuple]):
    """torch.nn.Linear weight [out, in] <-> meshtrain kernel [*in_shape, *out_shape] (x @ kernel)."""

    def factory(cfg: ModelConfig):
        ins, outs = in_shape(cfg), out_shape(cfg)
        to_mt = _one(lambda w: w.T.reshape(*ins, *outs))
        to_hf = _one(lambda k: k.reshape(int(np.prod(ins)), int(np.prod(outs))).T)
        return to_mt, to_hf

    return factory


_IDENTITY = (_one(lambda x: x), _one(lambda x: x))
_E = lambda c: (c.d_model,)
_F = lambda c: (c.d_ff,)
_Q = lambda c: (c.num_heads, c.head_dim)
_KV = lambda c: (c.num_kv_heads, c.head_dim)


def _group(params, hf_names, stacked, transforms) -> TensorGroup:
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


def _size(hf: dict, key: str) -> int:
    """A positive integer field of config.json, or an error naming it."""
    value = hf.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise UserError(f"config.json: {key}={value!r}; expected a positive integer")
    return value


def _rope_theta(hf: dict, legacy_key: str = "rope_theta") -> tuple[float, float]:
    """(theta, partial rotary factor) from `rope_parameters` (transformers >= 5) or legacy keys."""
    rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
    if not isinstance(rope, dict):
        raise UserError(f"config.json: rope_parameters={rope!r}; expected an object")
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise UserError(f"config.json: rope_type {rope_type!r} (rotary scaling) is not supported; "
                        f"meshtrain implements rope_type 'default' only")
    theta = rope.get("rope_theta", hf.get(legacy_key, hf.get("rope_theta", 10000.0)))
    fraction = rope.get("partial_rotary_factor", hf.get("rotary_pct", hf.get("partial_rotary_factor", 1.0)))
    return float(theta), float(fraction)


def _require(hf: dict, key: str, allowed, meaning: str, default=None):
    value = hf.get(key, default)
    if value not in allowed:
        raise UserError(f"config.json: {key}={value!r} is not supported ({meaning}); "
                        f"supported: {', '.join(map(repr, allowed))}")
    return value


def _common_hf_config(cfg: ModelConfig, dtype: str) -> dict:
    return {"vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "max_position_embeddings": cfg.max_seq_len, "initializer_range": cfg.init_std,
            "tie_word_embeddings": cfg.tie_embeddings, "dtype": dtype, "torch_dtype": dtype,
            "use_cache": True}


def _mismatches(cfg: ModelConfig, wanted: dict) -> list[str]:
    return [f"model.{key}={getattr(cfg, key)!r} (needs {' or '.join(map(repr, allowed))})"
            for key, allowed in wanted.items() if getattr(cfg, key) not in allowed]


class Llama(Family):
    architecture = "LlamaForCausalLM"
    model_type = "llama"
    embedding = "model.embed_tokens.weight"

    def fit_errors(self, cfg):
        return _mismatches(cfg, {"block": ("sequential",), "mlp": ("swiglu",), "norm": ("rmsnorm",),
                                 "positions": ("rope",), "rope_fraction": (1.0,), "use_bias": (False,)})

    def model_config(self, hf, base):
        _require(hf, "hidden_act", ("silu",), "Llama's MLP is SwiGLU", default="silu")
        for key in ("attention_bias", "mlp_bias"):
            _require(hf, key, (False, None), "meshtrain's Llama has no biases")
        theta, _ = _rope_theta(hf)
        heads, hidden = _size(hf, "num_attention_heads"), _size(hf, "hidden_size")
        return dataclasses.replace(
            base, name=hf.get("model_type", "llama"), vocab_size=_size(hf, "vocab_size"), d_model=hidden,
            num_layers=_size(hf, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=_size(hf, "num_key_value_heads") if hf.get("num_key_value_heads") else heads,
            head_dim=_size(hf, "head_dim") if hf.get("head_dim") else hidden // heads,
            d_ff=_size(hf, "intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", base.max_seq_len), block="sequential",
            mlp="swiglu", norm="rmsnorm", norm_eps=float(hf.get("rms_norm_eps", 1e-6)), positions="rope",
            rope_theta=theta, rope_fraction=1.0, use_bias=False,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", base.init_std)))

    def hf_config(self, cfg, dtype):
        return {"architectures": [self.architecture], "model_type": self.model_type,
                **_common_hf_config(cfg, dtype), "num_key_value_heads": cfg.num_kv_heads,
                "head_dim": cfg.head_dim, "hidden_act": "silu", "rms_norm_eps": cfg.norm_eps,
                "attention_bias": False, "mlp_bias": False, "rope_theta": cfg.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta}}

    def groups(self, cfg):
        layer = "model.layers.{i}."
        groups = [
            _group(["embed/embedding"], [self.embedding], False, _IDENTITY),
            _group(["final_norm/scale"], ["model.norm.weight"], False, _IDENTITY),
            _group(["layers/pre_norm/scale"], [layer + "input_layernorm.weight"], True, _IDENTITY),
            _group(["layers/mlp_norm/scale"], [layer + "post_attention_layernorm.weight"], True, _IDENTITY),
            _group(["layers/attention/query/kernel"], [layer + "self_attn.q_proj.weight"], True,
                   _linear(_Q, _E)(cfg)),
            _group(["layers/attention/key/kernel"], [layer + "self_attn.k_proj.weight"], True,
                   _linear(_KV, _E)(cfg)),
            _group(["layers/attention/value/kernel"], [layer + "self_attn.v_proj.weight"], True,
                   _linear(_KV, _E)(cfg)),
            _group(["layers/attention/out/kernel"], [layer + "self_attn.o_proj.weight"], True,
                   _linear(_E, _Q)(cfg)),
            _group(["layers/mlp/wi_gate/kernel"], [layer + "mlp.gate_proj.weight"], True, _linear(_F, _E)(cfg)),
            _group(["layers/mlp/wi_up/kernel"], [layer + "mlp.up_proj.weight"], True, _linear(_F, _E)(cfg)),
            _group(["layers/mlp/wo/kernel"], [layer + "mlp.down_proj.weight"], True, _linear(_E, _F)(cfg)),
        ]
        if not cfg.tie_embeddings:
            groups.append(_group(["unembed/kernel"], ["lm_head.weight"], False, _linear(lambda c: (c.vocab_size,), _E)(cfg)))
        return groups

    def ignored(self, name, cfg):
        return super().ignored(name, cfg) or (cfg.tie_embeddings and name == "lm_head.weight")


# Hugging Face hidden_act -> meshtrain mlp; "gelu" is erf-exact there, the tanh form here (GPT-2/3).
_GELUS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu"}
_HF_GELU = {"gelu_exact": "gelu", "gelu": "gelu_new"}


class GPTNeoX(Family):
    architecture = "GPTNeoXForCausalLM"
    model_type = "gpt_neox"
    embedding = "gpt_neox.embed_in.weight"

    def fit_errors(self, cfg):
        errors = _mismatches(cfg, {"block": ("parallel_two_norms", "sequential"), "mlp": ("gelu_exact", "gelu"),
                                   "norm": ("layernorm",), "positions": ("rope",), "use_bias": (True,),
                                   "num_kv_heads": (cfg.num_heads,)})
        if cfg.num_heads * cfg.head_dim != cfg.d_model:
            errors.append(f"model.head_dim={cfg.head_dim} (needs d_model / num_heads = "
                          f"{cfg.d_model / cfg.num_heads:g})")
        return errors

    def model_config(self, hf, base):
        act = _require(hf, "hidden_act", tuple(_GELUS), "GPT-NeoX's MLP is a GELU", default="gelu")
        _require(hf, "attention_bias", (True, None), "meshtrain's GPT-NeoX has biases in every layer")
        theta, fraction = _rope_theta(hf, legacy_key="rotary_emb_base")
        heads, hidden = _size(hf, "num_attention_heads"), _size(hf, "hidden_size")
        return dataclasses.replace(
            base, name=hf.get("model_type", "gpt_neox"), vocab_size=_size(hf, "vocab_size"),
            d_model=hidden, num_layers=_size(hf, "num_hidden_layers"), num_heads=heads,
            num_kv_heads=heads, head_dim=hidden // heads, d_ff=_size(hf, "intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", base.max_seq_len),
            block="parallel_two_norms" if hf.get("use_parallel_residual", True) else "sequential",
            mlp=_GELUS[act], norm="layernorm", norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            positions="rope", rope_theta=theta, rope_fraction=fraction, use_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", base.init_std)))

    def hf_config(self, cfg, dtype):
        return {"architectures": [self.architecture], "model_type": self.model_type,
                **_common_hf_config(cfg, dtype),
                "hidden_act": _HF_GELU[cfg.mlp],
                "layer_norm_eps": cfg.norm_eps, "use_parallel_residual": cfg.block == "parallel_two_norms",
                "attention_bias": True, "rotary_pct": cfg.rope_fraction, "rotary_emb_base": cfg.rope_theta,
                "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta,
                                    "partial_rotary_factor": cfg.rope_fraction}}

    def groups(self, cfg):
        layer = "gpt_neox.layers.{i}."
        h, d, e = cfg.num_heads, cfg.head_dim, cfg.d_model

        # query_key_value interleaves per head: rows [head, (q | k | v), head_dim].
        def qkv_to_mt(w):
            w = w.reshape(h, 3, d, e)
            return tuple(w[:, j].transpose(2, 0, 1) for j in range(3))

        def qkv_to_hf(q, k, v):
            return (jnp.stack([x.transpose(1, 2, 0) for x in (q, k, v)], axis=1).reshape(3 * h * d, e),)

        def qkv_bias_to_mt(b):
            b = b.reshape(h, 3, d)
            return tuple(b[:, j] for j in range(3))

        def qkv_bias_to_hf(q, k, v):
            return (jnp.stack([q, k, v], axis=1).reshape(3 * h * d),)

        attention = ["layers/attention/query/", "layers/attention/key/", "layers/attention/value/"]
        groups = [
            _group(["embed/embedding"], [self.embedding], False, _IDENTITY),
            _group(["final_norm/scale"], ["gpt_neox.final_layer_norm.weight"], False, _IDENTITY),
            _group(["final_norm/bias"], ["gpt_neox.final_layer_norm.bias"], False, _IDENTITY),
            _group(["layers/pre_norm/scale"], [layer + "input_layernorm.weight"], True, _IDENTITY),
            _group(["layers/pre_norm/bias"], [layer + "input_layernorm.bias"], True, _IDENTITY),
            _group(["layers/mlp_norm/scale"], [layer + "post_attention_layernorm.weight"], True, _IDENTITY),
            _group(["layers/mlp_norm/bias"], [layer + "post_attention_layernorm.bias"], True, _IDENTITY),
            _group([p + "kernel" for p in attention], [layer + "attention.query_key_value.weight"], True,
                   (qkv_to_mt, qkv_to_hf)),
            _group([p + "bias" for p in attention], [layer + "attention.query_key_value.bias"], True,
                   (qkv_bias_to_mt, qkv_bias_to_hf)),
            _group(["layers/attention/out/kernel"], [layer + "attention.dense.weight"], True, _linear(_E, _Q)(cfg)),
            _group(["layers/attention/out/bias"], [layer + "attention.dense.bias"], True, _IDENTITY),
            _group(["layers/mlp/wi/kernel"], [layer + "mlp.dense_h_to_4h.weight"], True, _linear(_F, _E)(cfg)),
            _group(["layers/mlp/wi/bias"], [layer + "mlp.dense_h_to_4h.bias"], True, _IDENTITY),
            _group(["layers/mlp/wo/kernel"], [layer + "mlp.dense_4h_to_h.weight"], True, _linear(_E, _F)(cfg)),
            _group(["layers/mlp/wo/bias"], [layer + "mlp.dense_4h_to_h.bias"], True, _IDENTITY),
        ]
        if not cfg.tie_embeddings:
            groups.append(_group(["unembed/kernel"], ["embed_out.weight"], False,
                                 _linear(lambda c: (c.vocab_size,), _E)(cfg)))
        return groups

    def ignored(self, name, cfg):
        return super().ignored(name, cfg) or (cfg.tie_embeddings and name == "embed_out.weight")


FAMILIES = (Llama(), GPTNeoX())


def family_for_architectures(architectures) -> Family:
    """The family config.json's `architectures` names, or an error naming the supported ones."""
    names = list(architectures or [])
    for family in FAMILIES:
        if family.architecture in names:
            return family
    raise UserError(f"config.json: architectures {names} is not supported; supported: "
                    f"{', '.join(f.architecture for f in FAMILIES)}")


def family_for_model(cfg: ModelConfig, architecture: str | None = None) -> Family:
    """The family that expresses `cfg` exactly (`architecture` picks one), or an error saying, for
    each family, which model settings it cannot express."""
    candidates = [f for f in FAMILIES if architecture in (None, f.architecture)]
    if not candidates:
        raise UserError(f"--architecture {architecture!r} is not supported; supported: "
                        f"{', '.join(f.architecture for f in FAMILIES)}")
    reasons = []
    for family in candidates:
        errors = family.fit_errors(cfg)
        if not errors:
            return family
        reasons.append(f"{family.architecture} needs {', '.join(errors)}")
    raise UserError("this model has no Hugging Face equivalent: " + "; ".join(reasons))


def hf_shapes(group: TensorGroup, param_shapes: dict[ParamPath, tuple[tuple, np.dtype]]) -> list[tuple]:
    """The shapes of one layer's HF tensors for a group, derived from the meshtrain shapes."""
    per_layer = [jax.ShapeDtypeStruct(shape[1:] if group.stacked else shape, dtype)
                 for shape, dtype in (param_shapes[p] for p in group.params)]
    return [tuple(s.shape) for s in jax.eval_shape(group.to_hf, *per_layer)]


def hf_tensor_shapes(groups: list[TensorGroup], param_shapes: dict[ParamPath, tuple[tuple, np.dtype]],
                     num_layers: int) -> dict[str, tuple]:
    """Every Hugging Face tensor name the groups map to -> its shape, layer by layer."""
    shapes = {}
    for group in groups:
        layer_shapes = hf_shapes(group, param_shapes)
        for layer in group.layers(num_layers):
            shapes.update(zip(group.hf_names_at(layer), layer_shapes))
    return shapes
