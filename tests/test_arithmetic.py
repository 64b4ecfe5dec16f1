"""trainer.planning: FLOPs per token and memory per chip, checked three ways.

1. Against XLA. The real train step of a tiny model (trainer.step.partition.trace_train_step, lowered: sharded
   state, donated, largest batch) is compiled on CPU and its `cost_analysis()` FLOPs and
   `memory_analysis()` bytes are compared with the analytic counts. The model is shaped so matmuls
   dominate (d_model 256, d_ff 1024, 4 layers, 4 query heads of 64 and one key/value head, seq 256,
   vocab 1024, batch 8): XLA also counts elementwise work (softmax, norms, rotary, the loss, the
   optimizer's update, ~1% here), which model FLOPs leave out by definition.
   - XLA's HloCostAnalysis counts the body of a while loop once, not once per iteration, so the FLOPs
     checks compile the layers unrolled (model.scan_layers=false): the same operations, counted.
   - Memory is compared as arguments + temporaries (the step's peak: the outputs alias the donated
     state, so they add nothing), against params + grads + optimizer + activations + the batch. The
     state alone (arguments) must agree to 1%; the total may be 15% under or 20% over (an
     over-estimate errs towards plans that fit: under remat=full XLA frees recomputed residuals
     sooner than the model assumes). The memory checks compile the
     scanned layers, the shape that honours remat: unrolled, XLA's CPU scheduler hoists the
     recomputation and keeps everything whatever the policy, so unrolled remat runs are not compared.
2. Against published runs (tests/fixtures/published_runs.yaml, every figure with its source):
   PaLM 540B's total training FLOPs and MFU, GPT-3 175B's 6ND FLOPs and Lambda's GPU-years.
3. Against the architecture: changing one option changes FLOPs per token by exactly the analytic
   parameter or attention difference.
"""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import pytest
import yaml

from meshtrain.model.params import count_params
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.batch_schedule import tokens_through
from meshtrain.trainer.config.presets import model_preset
from meshtrain.trainer.planning.flops import (
    FLOPS_CONVENTIONS,
    attention_flops_per_token,
    flops_breakdown,
    hardware_flops_per_token,
    megatron_core_flops_per_token,
    megatron_flops_per_token,
    model_flops_per_token,
    utilization,
)
from meshtrain.trainer.planning.memory import MemoryEstimate, memory_per_chip
from meshtrain.trainer.step.partition import make_mesh, trace_train_step

PUBLISHED = yaml.safe_load((Path(__file__).parent / "fixtures" / "published_runs.yaml").read_text())

TINY = [
    "model.vocab_size=1024",
    "model.d_model=256",
    "model.num_layers=4",
    "model.num_heads=4",
    "model.num_kv_heads=1",
    "model.head_dim=64",
    "model.d_ff=1024",
    "data.seq_len=256",
    "train.batch_size=8",
    "mesh.ici_fsdp=1",
]
BATCH_FEATURES = 5  # inputs, targets, segment_ids, positions (int32) and weights (float32) per token


def _compiled(overrides: tuple[str, ...], devices: int = 1):
    """(config, mesh axis sizes, XLA FLOPs per device, argument bytes, temporary bytes)."""
    return _compile(tuple(overrides), devices)


@functools.cache
def _compile(overrides: tuple[str, ...], devices: int):
    cfg = load_experiment(None, [*TINY, *overrides])
    mesh = make_mesh(cfg, jax.devices()[:devices])
    compiled = trace_train_step(cfg, mesh).lower().compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    memory = compiled.memory_analysis()
    return cfg, dict(mesh.shape), cost["flops"], memory.argument_size_in_bytes, memory.temp_size_in_bytes


def _tokens(cfg) -> int:
    return cfg.train.batch_size * cfg.data.seq_len


# --- 1. against XLA ------------------------------------------------------------------------------


def test_model_flops_match_xla_without_remat():
    cfg, _, xla_flops, _, _ = _compiled(("model.remat=none", "model.scan_layers=false"))
    analytic = model_flops_per_token(cfg.model, cfg.data.seq_len) * _tokens(cfg)
    assert xla_flops / analytic == pytest.approx(1, abs=0.03)  # measured: 1.0094


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_hardware_flops_match_xla_with_remat(remat):
    cfg, _, xla_flops, _, _ = _compiled((f"model.remat={remat}", "model.scan_layers=false"))
    hardware = hardware_flops_per_token(cfg.model, cfg.data.seq_len) * _tokens(cfg)
    model = model_flops_per_token(cfg.model, cfg.data.seq_len) * _tokens(cfg)
    assert xla_flops / hardware == pytest.approx(1, abs=0.05)  # measured: full 1.0095, save_dots 1.0130
    assert xla_flops > model * 1.04  # the recomputation is really there, and really counted


MEMORY_CASES = {
    # name: (overrides, devices); measured estimate / XLA: see each line
    "none, unrolled": (("model.remat=none", "model.scan_layers=false"), 1),  # 1.06
    "none": (("model.remat=none",), 1),  # 0.89
    "full": (("model.remat=full",), 1),  # 1.14 (jax 0.10), 1.15 (jax 0.12)
    "save_dots": (("model.remat=save_dots",), 1),  # 1.04, 1.08
    "full, fsdp 2 x tensor 2": (("model.remat=full", "mesh.ici_fsdp=2", "mesh.ici_tensor=2"), 4),  # 1.00, 1.03
    # 0.97, 1.00
    "save_dots, fsdp 2 x sequence 2": (("model.remat=save_dots", "mesh.ici_fsdp=2", "mesh.ici_sequence=2"), 4),
}


@pytest.mark.parametrize("case", MEMORY_CASES)
def test_memory_matches_xla(case):
    overrides, devices = MEMORY_CASES[case]
    cfg, mesh_sizes, _, arguments, temporaries = _compiled(overrides, devices)
    estimate = memory_per_chip(cfg, mesh_sizes)
    batch_ways = mesh_sizes["data"] * mesh_sizes["fsdp"] * mesh_sizes["sequence"]
    batch = BATCH_FEATURES * 4 * _tokens(cfg) // batch_ways
    assert (estimate.params + estimate.optimizer + batch) / arguments == pytest.approx(1, abs=0.01)
    assert 0.85 <= (estimate.total + batch) / (arguments + temporaries) <= 1.20


# --- 2. published runs ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def palm():
    return load_experiment(PUBLISHED["palm-540b"]["experiment"])


def test_palm_n_is_every_parameter(palm):
    """PaLM's N in 6N is the whole parameter count, the shared embedding included: 6 x 540.35B
    reproduces the published 45.7%; 6 x the non-embedding count would give 45.3%."""
    run = PUBLISHED["palm-540b"]
    count = count_params(palm.model)
    assert count.total / run["params"] == pytest.approx(1, abs=0.0005)

    def mfu(params):
        return 6 * params * run["tokens_per_sec"] / (run["chips"] * run["peak_flops_per_chip"])

    assert mfu(count.total) == pytest.approx(run["mfu_without_attention"], abs=0.002)
    assert mfu(count.non_embedding) < run["mfu_without_attention"] - 0.003


def test_palm_540b_total_flops(palm):
    run = PUBLISHED["palm-540b"]
    per_token = model_flops_per_token(palm.model, palm.data.seq_len)
    schedule_tokens = tokens_through(palm.train, palm.data.seq_len, palm.train.steps)
    assert schedule_tokens / run["tokens"] == pytest.approx(1, abs=0.01)  # 775.9B by the batch ramp
    for tokens in (schedule_tokens, run["tokens"]):  # 2.543e24 and 2.557e24
        assert per_token * tokens / run["train_flops"] == pytest.approx(1, abs=0.02)


@pytest.mark.parametrize("convention, published", [("palm", "mfu_with_attention"), ("6nd", "mfu_without_attention")])
def test_palm_540b_mfu(palm, convention, published):
    run = PUBLISHED["palm-540b"]
    mfu = utilization(
        model_flops_per_token(palm.model, palm.data.seq_len, convention),
        run["tokens_per_sec"],
        run["chips"],
        run["peak_flops_per_chip"],
    )
    assert mfu == pytest.approx(run[published], abs=0.002)  # measured: 0.4623 and 0.4573


def test_palm_540b_hfu_exceeds_mfu(palm):
    """With full remat HFU is 56.2%; PaLM reports 57.8% for its own (unpublished) remat policy."""
    run = PUBLISHED["palm-540b"]
    args = (run["tokens_per_sec"], run["chips"], run["peak_flops_per_chip"])
    hfu = utilization(hardware_flops_per_token(palm.model, palm.data.seq_len), *args)
    mfu = utilization(model_flops_per_token(palm.model, palm.data.seq_len), *args)
    assert palm.model.remat == "full" and mfu < hfu < run["hfu"]


def test_gpt3_175b_flops_and_gpu_years():
    run = PUBLISHED["gpt3-175b"]
    model = model_preset(run["preset"])
    six_nd = model_flops_per_token(model, run["seq_len"], "6nd") * run["tokens"]
    assert six_nd / run["train_flops_6nd"] == pytest.approx(1, abs=0.01)  # measured: 3.1429e23
    palm = model_flops_per_token(model, run["seq_len"]) * run["tokens"]
    assert palm / six_nd - 1 == pytest.approx(run["attention_share"], abs=0.005)  # measured: 2.77%
    years = six_nd / run["sustained_flops_per_gpu"] / (365.25 * 86400)
    assert years / run["gpu_years"] == pytest.approx(1, abs=0.01)


# --- 3. the architecture -------------------------------------------------------------------------

BASE = dict(
    vocab_size=1000,
    d_model=96,
    num_layers=3,
    num_heads=4,
    num_kv_heads=1,
    head_dim=24,
    d_ff=320,
    max_seq_len=512,
    block="parallel",
    mlp="swiglu",
    positions="rope",
    use_bias=False,
    tie_embeddings=True,
    remat="none",
)
T = 128


def _model(**overrides):
    return model_preset("tiny", **{**BASE, **overrides})


def _delta(before: dict, after: dict, convention: str = "palm") -> float:
    return model_flops_per_token(_model(**after), T, convention) - model_flops_per_token(
        _model(**before), T, convention
    )


@pytest.mark.parametrize("kv_before, kv_after", [(1, 2), (2, 4), (1, 4)])  # MQA -> GQA -> MHA
def test_kv_heads_change_only_the_kv_projections(kv_before, kv_after):
    m = _model()
    kv_params = m.num_layers * 2 * m.d_model * m.head_dim * (kv_after - kv_before)
    assert _delta(dict(num_kv_heads=kv_before), dict(num_kv_heads=kv_after)) == 6 * kv_params
    # The attention term follows query heads only.
    assert attention_flops_per_token(_model(num_kv_heads=kv_before), T) == attention_flops_per_token(
        _model(num_kv_heads=kv_after), T
    )


@pytest.mark.parametrize(
    "before, after, extra_params",
    [
        (dict(tie_embeddings=True), dict(tie_embeddings=False), BASE["vocab_size"] * BASE["d_model"]),
        (dict(positions="rope"), dict(positions="learned"), BASE["max_seq_len"] * BASE["d_model"]),
        (dict(mlp="gelu"), dict(mlp="swiglu"), BASE["num_layers"] * BASE["d_model"] * BASE["d_ff"]),
        (dict(block="parallel"), dict(block="sequential"), BASE["num_layers"] * BASE["d_model"]),
    ],
)
@pytest.mark.parametrize("convention", FLOPS_CONVENTIONS)
def test_architecture_options_change_flops_by_their_parameters(before, after, extra_params, convention):
    assert _delta(before, after, convention) == 6 * extra_params


def test_attention_term_and_conventions():
    m = _model()
    full = 12 * m.num_layers * m.num_heads * m.head_dim * T
    dense = 6 * count_params(m).total
    assert model_flops_per_token(m, T, "palm") == dense + full
    assert model_flops_per_token(m, T, "causal") == dense + full / 2
    assert model_flops_per_token(m, T, "6nd") == dense
    assert _delta(dict(num_heads=4), dict(num_heads=8), "6nd") == 6 * m.num_layers * m.d_model * m.head_dim * 4 * 2
    with pytest.raises(ValueError, match="convention"):
        model_flops_per_token(m, T, "kaplan")


def test_megatrons_two_counts_agree_where_they_should():
    """Megatron-LM's 2021 count (eq. 3: the block four times with its recompute, the logits three
    times) and Megatron-Core's 2024 one (no recompute) are written from two papers; for a GPT-shaped
    model a third more of the 2024 count is the 2021 count plus one more pass of the logits, 2 h V.
    Both match PaLM's count but for the parameters that do no matmul: the input table, biases, norms
    and positions, which PaLM's 6N counts and Megatron's do not."""
    gpt = model_preset("gpt3-175b", vocab_size=131072, tie_embeddings=False, max_seq_len=4096)
    h, V = gpt.d_model, gpt.vocab_size
    core, eq3 = megatron_core_flops_per_token(gpt, 4096), megatron_flops_per_token(gpt, 4096)
    assert core * 4 / 3 - eq3 == pytest.approx(2 * h * V, rel=1e-9)
    block_weights = gpt.num_layers * 12 * h * h  # q, k, v, out (4 h^2) and the MLP (8 h^2)
    no_matmul = count_params(gpt).total - block_weights - h * V
    assert model_flops_per_token(gpt, 4096, "palm") - core == pytest.approx(6 * no_matmul, rel=1e-9)
    # Grouped-query attention and a gated MLP change Megatron-Core's count as they change the weights.
    llama = _model(block="sequential", tie_embeddings=False, use_bias=False)
    weights = count_params(llama).total - llama.vocab_size * llama.d_model
    weights -= llama.num_layers * 2 * llama.d_model + llama.d_model  # the norms' scales
    assert megatron_core_flops_per_token(llama, T) == pytest.approx(
        6 * weights + attention_flops_per_token(llama, T), rel=1e-9
    )


@pytest.mark.parametrize("block", ["parallel", "sequential"])
@pytest.mark.parametrize("convention", FLOPS_CONVENTIONS)
def test_hardware_flops_by_remat_policy(block, convention):
    m = _model(block=block)
    model = model_flops_per_token(m, T, convention)
    attention_forward = attention_flops_per_token(m, T, convention) / 3
    e, f, hq, layers = m.d_model, m.d_ff, m.num_heads * m.head_dim, m.num_layers
    block_params = (
        e * hq + 2 * e * m.num_kv_heads * m.head_dim + hq * e + 3 * e * f + e * (1 if block == "parallel" else 2)
    )
    # Full remat skips the matmuls whose outputs only feed the residual sum.
    skipped = f * e + (hq * e if block == "parallel" else 0)
    assert hardware_flops_per_token(m, T, "none", convention) == model
    assert hardware_flops_per_token(m, T, "save_dots", convention) == model + attention_forward
    assert hardware_flops_per_token(m, T, "full", convention) == pytest.approx(
        model + 2 * layers * (block_params - skipped) + attention_forward, rel=1e-12
    )
    assert hardware_flops_per_token(m, T, None, convention) == model  # model.remat=none
    breakdown = flops_breakdown(m, T, "full", convention)
    assert breakdown.hardware == breakdown.model + breakdown.recompute
    assert breakdown.params_total == count_params(m).total


# --- memory: the accounting on its own -----------------------------------------------------------


def _memory_cfg(*overrides):
    return load_experiment(None, [*TINY, "model.num_kv_heads=4", *overrides])


def test_optimizer_state_is_two_float32_moments_split_like_params():
    for name in ("adamw", "adafactor"):
        cfg = _memory_cfg(f"optimizer.name={name}")
        whole = memory_per_chip(cfg, {})
        params = count_params(cfg.model).total
        assert whole.params == whole.grads == 4 * params
        assert 8 * params <= whole.optimizer < 8 * params + 1024  # + step counts, unused factored slots
        split = memory_per_chip(cfg, {"fsdp": 4})
        assert split.params == whole.params // 4  # every parameter has an embed axis, split 4 ways
        assert split.optimizer < whole.optimizer / 4 + 1024


def test_activations_follow_remat_microbatch_and_sharding():
    by_remat = {
        r: memory_per_chip(_memory_cfg(f"model.remat={r}"), {}).activations for r in ("none", "save_dots", "full")
    }
    assert by_remat["full"] < by_remat["save_dots"] < by_remat["none"]
    cfg = _memory_cfg("model.remat=full")
    assert memory_per_chip(cfg, {}, microbatch_rows=4).activations < by_remat["full"]
    accumulated = memory_per_chip(_memory_cfg("model.remat=full", "train.microbatches=2"), {})
    assert accumulated.activations == memory_per_chip(cfg, {}, microbatch_rows=4).activations
    assert accumulated.grads == 2 * memory_per_chip(cfg, {}).grads  # + each microbatch's own
    tensor = memory_per_chip(cfg, {"tensor": 4})
    assert tensor.activations < by_remat["full"] and tensor.params < memory_per_chip(cfg, {}).params
    estimate = memory_per_chip(cfg, {"data": 2})
    assert isinstance(estimate, MemoryEstimate) and estimate.total == sum(
        v for k, v in estimate.as_dict().items() if k != "total"
    )
