"""LlamaForCausalLM <-> meshtrain: sequential blocks, RMSNorm, SwiGLU, rotary, grouped-query attention."""

from __future__ import annotations

import dataclasses

from meshtrain.trainer.convert.family_base import (
    IDENTITY,
    KV,
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


class Llama(Family):
    architecture = "LlamaForCausalLM"
    model_type = "llama"
    embedding = "model.embed_tokens.weight"

    def fit_errors(self, cfg):
        return mismatches(
            cfg,
            {
                "block": ("sequential",),
                "mlp": ("swiglu",),
                "norm": ("rmsnorm",),
                "positions": ("rope",),
                "rope_fraction": (1.0,),
                "use_bias": (False,),
            },
        )

    def model_config(self, hf, base):
        require(hf, "hidden_act", ("silu",), "Llama's MLP is SwiGLU", default="silu")
        for key in ("attention_bias", "mlp_bias"):
            require(hf, key, (False, None), "meshtrain's Llama has no biases")
        theta, _ = rope_theta(hf)
        heads, hidden = size(hf, "num_attention_heads"), size(hf, "hidden_size")
        return dataclasses.replace(
            base,
            name=hf.get("model_type", "llama"),
            vocab_size=size(hf, "vocab_size"),
            d_model=hidden,
            num_layers=size(hf, "num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=size(hf, "num_key_value_heads") if hf.get("num_key_value_heads") else heads,
            head_dim=size(hf, "head_dim") if hf.get("head_dim") else hidden // heads,
            d_ff=size(hf, "intermediate_size"),
            max_seq_len=hf.get("max_position_embeddings", base.max_seq_len),
            block="sequential",
            mlp="swiglu",
            norm="rmsnorm",
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            positions="rope",
            rope_theta=theta,
            rope_fraction=1.0,
            use_bias=False,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            init_std=float(hf.get("initializer_range", base.init_std)),
        )

    def hf_config(self, cfg, dtype):
        return {
            "architectures": [self.architecture],
            "model_type": self.model_type,
            **common_hf_config(cfg, dtype),
            "num_key_value_heads": cfg.num_kv_heads,
            "head_dim": cfg.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": cfg.norm_eps,
            "attention_bias": False,
            "mlp_bias": False,
            "rope_theta": cfg.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        }

    def groups(self, cfg):
        layer = "model.layers.{i}."
        groups = [
            group(["embed/embedding"], [self.embedding], False, IDENTITY),
            group(["final_norm/scale"], ["model.norm.weight"], False, IDENTITY),
            group(["layers/pre_norm/scale"], [layer + "input_layernorm.weight"], True, IDENTITY),
            group(["layers/mlp_norm/scale"], [layer + "post_attention_layernorm.weight"], True, IDENTITY),
            group(["layers/attention/query/kernel"], [layer + "self_attn.q_proj.weight"], True, linear(Q, E)(cfg)),
            group(["layers/attention/key/kernel"], [layer + "self_attn.k_proj.weight"], True, linear(KV, E)(cfg)),
            group(["layers/attention/value/kernel"], [layer + "self_attn.v_proj.weight"], True, linear(KV, E)(cfg)),
            group(["layers/attention/out/kernel"], [layer + "self_attn.o_proj.weight"], True, linear(E, Q)(cfg)),
            group(["layers/mlp/wi_gate/kernel"], [layer + "mlp.gate_proj.weight"], True, linear(F, E)(cfg)),
            group(["layers/mlp/wi_up/kernel"], [layer + "mlp.up_proj.weight"], True, linear(F, E)(cfg)),
            group(["layers/mlp/wo/kernel"], [layer + "mlp.down_proj.weight"], True, linear(E, F)(cfg)),
        ]
        if not cfg.tie_embeddings:
            groups.append(
                group(["unembed/kernel"], ["lm_head.weight"], False, linear(lambda c: (c.vocab_size,), E)(cfg))
            )
        return groups

    def ignored(self, name, cfg):
        return super().ignored(name, cfg) or (cfg.tie_embeddings and name == "lm_head.weight")


# Hugging Face hidden_act -> meshtrain mlp; "gelu" is erf-exact there, the tanh form here (GPT-2/3).
