"""GPTNeoXForCausalLM (Pythia) <-> meshtrain: parallel residual with two LayerNorms, partial rotary, biases."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from meshtrain.trainer.convert.family_base import (
    IDENTITY,
    E,
    F,
    Family,
    Q,
    common_hf_config,
    group,
    linear,
    mismatches,
    require,
    rope_theta,
    size,
)

_GELUS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu", "gelu_fast": "gelu"}
_HF_GELU = {"gelu_exact": "gelu", "gelu": "gelu_new"}


class GPTNeoX(Family):
    architecture = "GPTNeoXForCausalLM"
    model_type = "gpt_neox"
    embedding = "gpt_neox.embed_in.weight"

    def fit_errors(self, cfg):
        errors = mismatches(
            cfg,
            {
                "block": ("parallel_two_norms", "sequential"),
                "mlp": ("gelu_exact", "gelu"),
                "norm": ("layernorm",),
                "positions": ("rope",),
                "use_bias": (True,),
                "num_kv_heads": (cfg.num_heads,),
            },
        )
        if cfg.num_heads * cfg.head_dim != cfg.d_model:
            errors.append(
                f"model.head_dim={cfg.head_dim} (needs d_model / num_heads = {cfg.d_model / cfg.num_heads:g})"
            )
        return errors

    def model_config(self, hf, base):
        act = require(hf, "hidden_act", tuple(_GELUS), "GPT-NeoX's MLP is a GELU", default="gelu")
        require(hf, "attention_bias", (True, None), "meshtrain's GPT-NeoX has biases in every layer")
        theta, fraction = rope_theta(hf, legacy_key="rotary_emb_base")
        heads, hidden = size(hf, "num_attention_heads"), size(hf, "hidden_size")
        return dataclasses.replace(
            base,
            name=hf.get("model_type", "gpt_neox"),
            vocab_size=size(hf, "vocab_size"),
            d_model=hidden,
            num_layers=size(hf, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=hidden // heads,
            d_ff=size(hf, "intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", base.max_seq_len),
            block="parallel_two_norms" if hf.get("use_parallel_residual", True) else "sequential",
            mlp=_GELUS[act],
            norm="layernorm",
            norm_eps=float(hf.get("layer_norm_eps", 1e-5)),
            positions="rope",
            rope_theta=theta,
            rope_fraction=fraction,
            use_bias=True,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", base.init_std)),
        )

    def hf_config(self, cfg, dtype):
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            **common_hf_config(cfg, dtype),
            "hidden_act": _HF_GELU[cfg.mlp],
            "layer_norm_eps": cfg.norm_eps,
            "use_parallel_residual": cfg.block == "parallel_two_norms",
            "attention_bias": True,
            "rotary_pct": cfg.rope_fraction,
            "rotary_emb_base": cfg.rope_theta,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": cfg.rope_theta,
                "partial_rotary_factor": cfg.rope_fraction,
            },
        }

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
            group(["embed/embedding"], [self.embedding], False, IDENTITY),
            group(["final_norm/scale"], ["gpt_neox.final_layer_norm.weight"], False, IDENTITY),
            group(["final_norm/bias"], ["gpt_neox.final_layer_norm.bias"], False, IDENTITY),
            group(["layers/pre_norm/scale"], [layer + "input_layernorm.weight"], True, IDENTITY),
            group(["layers/pre_norm/bias"], [layer + "input_layernorm.bias"], True, IDENTITY),
            group(["layers/mlp_norm/scale"], [layer + "post_attention_layernorm.weight"], True, IDENTITY),
            group(["layers/mlp_norm/bias"], [layer + "post_attention_layernorm.bias"], True, IDENTITY),
            group(
                [p + "kernel" for p in attention],
                [layer + "attention.query_key_value.weight"],
                True,
                (qkv_to_mt, qkv_to_hf),
            ),
            group(
                [p + "bias" for p in attention],
                [layer + "attention.query_key_value.bias"],
                True,
                (qkv_bias_to_mt, qkv_bias_to_hf),
            ),
            group(["layers/attention/out/kernel"], [layer + "attention.dense.weight"], True, linear(E, Q)(cfg)),
            group(["layers/attention/out/bias"], [layer + "attention.dense.bias"], True, IDENTITY),
            group(["layers/mlp/wi/kernel"], [layer + "mlp.dense_h_to_4h.weight"], True, linear(F, E)(cfg)),
            group(["layers/mlp/wi/bias"], [layer + "mlp.dense_h_to_4h.bias"], True, IDENTITY),
            group(["layers/mlp/wo/kernel"], [layer + "mlp.dense_4h_to_h.weight"], True, linear(E, F)(cfg)),
            group(["layers/mlp/wo/bias"], [layer + "mlp.dense_4h_to_h.bias"], True, IDENTITY),
        ]
        if not cfg.tie_embeddings:
            groups.append(
                group(["unembed/kernel"], ["embed_out.weight"], False, linear(lambda c: (c.vocab_size,), E)(cfg))
            )
        return groups

    def ignored(self, name, cfg):
        return super().ignored(name, cfg) or (cfg.tie_embeddings and name == "embed_out.weight")
