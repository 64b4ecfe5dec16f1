"""Training FLOPs per token: model FLOPs under a named convention, and what the hardware executes.

Every count is per token of training (one forward and one backward pass, the backward costing twice
the forward: 3 x forward) and counts a multiply-add as 2 FLOPs.

Model FLOPs (the numerator of MFU) are a property of the model and the sequence length only:

    palm    6 N + 12 L H Q T     PaLM Appendix B (attention counted in full, as the hardware runs it)
    causal  6 N +  6 L H Q T     the attention term halved for the causal mask
    6nd     6 N                  Kaplan et al. 2020, GPT-3 (Table D.1), Chinchilla

N is the total parameter count (model.params.count_params(...).total: embeddings included, so a
tied embedding's output projection, an untied one's second table, learned positions, biases and norm
scales all count), L layers, H query heads, Q head_dim, T the sequence length. Key/value heads do not
appear in the attention term: the scores q.k and the weighted sum p.v run once per query head, and
multi-query or grouped-query attention only shrinks the key/value projections, which N already counts.

Hardware FLOPs (the numerator of HFU) add what rematerialization recomputes in the backward pass; see
hardware_flops_per_token for the exact accounting.
"""

from __future__ import annotations

import dataclasses
import functools

from meshtrain.model.config import REMAT_POLICIES, ModelConfig
from meshtrain.model.params import ParamCount, count_params

FLOPS_CONVENTIONS = ("palm", "causal", "6nd")

# Forward FLOPs per token are a third of training FLOPs per token.
_FORWARD_SHARE = 1 / 3


@functools.lru_cache(maxsize=64)
def param_count(model: ModelConfig) -> ParamCount:
    """count_params(model), cached."""
    # count_params traces the model abstractly (a fraction of a second even for 540B); the tracker and
    # the cost tool ask for the same config many times.
    return count_params(model)


def _check_convention(convention: str) -> None:
    if convention not in FLOPS_CONVENTIONS:
        raise ValueError(f"unknown FLOPs convention {convention!r}: one of {', '.join(FLOPS_CONVENTIONS)}")


def attention_flops_per_token(model: ModelConfig, seq_len: int, convention: str = "palm") -> float:
    """The attention-score term of training FLOPs per token: 12 L H Q T (palm), half that (causal),
    0 (6nd).

    Per layer and token the forward pass computes q.k against T keys (2 H Q T FLOPs) and p.v over T
    values (2 H Q T): 4 L H Q T forward, x3 for training.
    """
    _check_convention(convention)
    full = 12.0 * model.num_layers * model.num_heads * model.head_dim * seq_len
    return {"palm": full, "causal": full / 2, "6nd": 0.0}[convention]


def model_flops_per_token(model: ModelConfig, seq_len: int, convention: str = "palm") -> float:
    """Training model FLOPs per token: 6 N plus the convention's attention term (module docstring)."""
    _check_convention(convention)
    return 6.0 * param_count(model).total + attention_flops_per_token(model, seq_len, convention)


def _skipped_recompute_params(model: ModelConfig) -> int:
    """Weights (per layer) whose forward matmul full remat does not redo.

    The backward pass of y = x @ W needs x and dy, never y. In a parallel block the attention output
    projection and the MLP's output matrix only feed the residual sum, so their outputs are never
    needed in the backward pass and the recomputation leaves them out (JAX's partial evaluation drops
    them, and XLA would); that holds with one norm or two (parallel_two_norms: both norms read the
    block input). In a sequential block the attention output projection feeds the MLP's norm,
    whose backward pass needs its input, so only the MLP output matrix is left out.
    """
    e, h, d, f = model.d_model, model.num_heads, model.head_dim, model.d_ff
    bias = e if model.use_bias else 0
    params = {"mlp_out": f * e + bias, "out": h * d * e + bias}
    return sum(params[name] for name in full_remat_skips(model))


def full_remat_skips(model: ModelConfig) -> frozenset[str]:
    """The block's matmuls full remat does not redo (see _skipped_recompute_params): 'mlp_out', and
    'out' (the attention output projection) in a parallel block. trainer/planning/performance.py
    times the replay by the same rule."""
    return frozenset({"mlp_out", "out"} if model.block != "sequential" else {"mlp_out"})


def _layer_params(model: ModelConfig) -> int:
    """Parameters of one decoder block (the layers' share of N, divided by L)."""
    count = param_count(model)
    outside = count.embedding + _final_norm_params(model)
    return (count.total - outside) // model.num_layers


def _final_norm_params(model: ModelConfig) -> int:
    return model.d_model * (2 if model.use_bias else 1)


@dataclasses.dataclass(frozen=True)
class FlopsBreakdown:
    """Training FLOPs per token, by term (all floats; `model` and `hardware` are the totals).

    dense: 6 N. attention: the convention's attention term. recompute: what the remat policy adds
    (hardware - model).
    """

    convention: str
    remat: str
    seq_len: int
    params_total: int
    params_non_embedding: int
    dense: float
    attention: float
    model: float
    recompute: float
    hardware: float


def recompute_flops_per_token(
    model: ModelConfig, seq_len: int, remat: str | None = None, convention: str = "palm"
) -> float:
    """FLOPs per token that the remat policy adds to model FLOPs (hardware_flops_per_token's docstring)."""
    _check_convention(convention)
    remat = model.remat if remat is None else remat
    if remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {remat!r}: one of {', '.join(REMAT_POLICIES)}")
    attention_forward = attention_flops_per_token(model, seq_len, convention) * _FORWARD_SHARE
    if remat == "none":
        return 0.0
    if remat == "save_dots":
        return attention_forward
    dense_forward = 2.0 * model.num_layers * (_layer_params(model) - _skipped_recompute_params(model))
    return dense_forward + attention_forward


def hardware_flops_per_token(
    model: ModelConfig, seq_len: int, remat: str | None = None, convention: str = "palm"
) -> float:
    """Training FLOPs per token the hardware executes under `remat` (default: model.remat).

    hardware = model FLOPs (the convention's) + the forward work the backward pass redoes:

    none       nothing: hardware = model FLOPs.
    full       each block's forward once more, 2 x (block parameters) + (the convention's forward
               attention, a third of its attention term) per layer and token, minus the matmuls
               whose outputs the backward pass never reads: the MLP output matrix, and in a parallel
               block also the attention output projection (y = x @ W needs x and dy to backpropagate,
               not y; these outputs only feed the residual sum, so the recomputation drops them).
               Embeddings, the final norm and the logits are outside the remat'd blocks and are not
               redone.
    save_dots  only the batch-dimension einsums are recomputed, q.k^T and p.v: the convention's
               forward attention term (4 L H Q T under palm). Projections and MLP matmuls keep their
               outputs; the elementwise work redone (norms, rotary, softmax, activations) is not counted,
               as model FLOPs count only matmuls.

    The `6nd` convention has no attention term, so under it no attention recomputation is counted
    either; HFU is only meaningful next to MFU of the same convention.
    """
    return model_flops_per_token(model, seq_len, convention) + recompute_flops_per_token(
        model, seq_len, remat, convention
    )


def flops_breakdown(
    model: ModelConfig, seq_len: int, remat: str | None = None, convention: str = "palm"
) -> FlopsBreakdown:
    """Every term of model and hardware FLOPs per token, for reports and tests."""
    remat = model.remat if remat is None else remat
    count = param_count(model)
    dense = 6.0 * count.total
    attention = attention_flops_per_token(model, seq_len, convention)
    recompute = recompute_flops_per_token(model, seq_len, remat, convention)
    return FlopsBreakdown(
        convention=convention,
        remat=remat,
        seq_len=seq_len,
        params_total=count.total,
        params_non_embedding=count.non_embedding,
        dense=dense,
        attention=attention,
        model=dense + attention,
        recompute=recompute,
        hardware=dense + attention + recompute,
    )


def utilization(flops_per_token: float, tokens_per_sec: float, chips: int, peak_flops_per_chip: float) -> float:
    """Achieved FLOP/s over the chips' peak: MFU with model FLOPs per token, HFU with hardware FLOPs.

    utilization(model_flops_per_token(cfg, 2048), 238.3e3, 6144, 275e12) is PaLM 540B's 46.2%.
    """
    if chips <= 0 or peak_flops_per_chip <= 0:
        raise ValueError(f"chips ({chips}) and peak FLOP/s ({peak_flops_per_chip}) must be positive")
    return flops_per_token * tokens_per_sec / (chips * peak_flops_per_chip)


def megatron_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token as Megatron-LM reports them (Narayanan et al. 2021, arXiv 2104.04473,
    eq. 3): 96 l h^2 (1 + s / 6h + V / 16 l h) per sequence of s tokens, i.e. per token
    96 l h^2 + 16 l h s + 6 h V: the GPT block's 12 h^2 weights and its full (unhalved) attention
    counted 4 times (forward, backward x2, and the forward replayed by full activation recompute),
    the logits 3 times. It is a hardware-FLOPs count for GPT-shaped models (d_ff = 4h, H Q = h), which
    Megatron-LM, Megatron-DeepSpeed (BLOOM) and MT-NLG publish; used to read their figures."""
    h, layers = model.d_model, model.num_layers
    return 96.0 * layers * h * h + 16.0 * layers * h * seq_len + 6.0 * h * model.vocab_size


def megatron_core_flops_per_token(model: ModelConfig, seq_len: int) -> float:
    """Training model FLOPs per token as Megatron-Core counts them for its MFU (num_floating_point_
    operations in megatron/training/training.py, 2024, as for its H100 scaling table): per layer
    6 x the attention projections (q and out at H Q, k and v at G Q each) + 12 H Q T for the scores
    (full, unhalved) + 6 x the MLP weights (x 3/2 when gated), and 6 h V for the logits. Nothing is
    counted for the input embedding, biases or norms, and no recompute: close to PaLM's 6N, but
    a model's untied input table, a sixth of a 1.7B model's parameters, is left out."""
    h, layers, qdim = model.d_model, model.num_layers, model.num_heads * model.head_dim
    kv_share = model.num_kv_heads / model.num_heads
    gated = 1.5 if model.mlp == "swiglu" else 1.0
    per_layer = 12.0 * (h * qdim * (1 + kv_share) + qdim * seq_len + h * model.d_ff * gated)
    return layers * per_layer + 6.0 * h * model.vocab_size
