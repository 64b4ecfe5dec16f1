"""The model's settings: one frozen dataclass that every decoder family is a value of.

Defaults live in configs/base.yaml (with a line of doc each) and presets in configs/model/*.yaml;
this class only fixes the names, the types and the allowed values, so that the model package never
depends on how configs are loaded.
"""

from __future__ import annotations

import dataclasses

BLOCKS = ("parallel", "parallel_two_norms", "sequential")
MLPS = ("swiglu", "gelu", "gelu_exact")
NORMS = ("rmsnorm", "layernorm")
POSITIONS = ("rope", "learned")
REMAT_POLICIES = ("none", "full", "save_dots")
DTYPES = ("auto", "float32", "bfloat16", "float16")
ATTENTION = ("auto", "dot_product", "splash", "flash_gpu")  # model/attention_kernels.py


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """A decoder-only transformer; PaLM, Llama and GPT-3 are particular values of these fields."""

    name: str
    vocab_size: int
    d_model: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    block: str
    mlp: str
    norm: str
    norm_eps: float
    positions: str
    rope_theta: float
    rope_fraction: float
    use_bias: bool
    tie_embeddings: bool
    z_loss: float
    init_std: float
    dtype: str
    param_dtype: str
    remat: str
    scan_layers: bool
    attention: str

    @property
    def rotary_dims(self) -> int:
        """Leading dimensions of each head that rotary embeddings rotate, truncated exactly as Hugging
        Face GPT-NeoX truncates int(head_size * partial_rotary_factor), so converted checkpoints agree."""
        return int(self.head_dim * self.rope_fraction)


def model_config_errors(cfg: ModelConfig) -> list[tuple[str, object, str]]:
    """Returns (key, value, what would be valid) for every inconsistent field; empty when valid."""
    errors = []
    for key, allowed in (
        ("block", BLOCKS),
        ("mlp", MLPS),
        ("norm", NORMS),
        ("positions", POSITIONS),
        ("remat", REMAT_POLICIES),
        ("dtype", DTYPES),
        ("param_dtype", DTYPES[1:]),
        ("attention", ATTENTION),
    ):
        value = getattr(cfg, key)
        if value not in allowed:
            errors.append((key, value, f"one of {', '.join(allowed)}"))
    for key in ("vocab_size", "d_model", "num_layers", "num_heads", "num_kv_heads", "head_dim", "d_ff", "max_seq_len"):
        if getattr(cfg, key) < 1:
            errors.append((key, getattr(cfg, key), "a positive integer"))
    if cfg.num_kv_heads >= 1 and cfg.num_heads % cfg.num_kv_heads:
        errors.append(("num_kv_heads", cfg.num_kv_heads, f"a divisor of num_heads={cfg.num_heads}"))
    if not 0 < cfg.rope_fraction <= 1:
        errors.append(("rope_fraction", cfg.rope_fraction, "a number in (0, 1]"))
    elif cfg.positions == "rope" and cfg.head_dim >= 1 and (cfg.rotary_dims < 2 or cfg.rotary_dims % 2):
        # Rotary embeddings rotate pairs of dimensions: blame head_dim when it is rotated whole.
        if cfg.rope_fraction == 1:
            errors.append(("head_dim", cfg.head_dim, "an even number (rotary embeddings rotate pairs)"))
        else:
            errors.append(
                (
                    "rope_fraction",
                    cfg.rope_fraction,
                    f"a share of head_dim={cfg.head_dim} that rotates an even number >= 2 of "
                    f"dimensions (int(head_dim * rope_fraction) is {cfg.rotary_dims})",
                )
            )
    for key in ("norm_eps", "rope_theta", "init_std"):
        if getattr(cfg, key) <= 0:
            errors.append((key, getattr(cfg, key), "a positive number"))
    if cfg.z_loss < 0:
        errors.append(("z_loss", cfg.z_loss, "a number >= 0"))
    return errors
