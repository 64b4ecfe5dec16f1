"""`meshtrain plan`: the performance model against published runs, its physics, the planner's layouts,
calibration on a real CPU run, and bad input."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from meshtrain.tools.plan import main as plan_main
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.hardware import efficiency_family, efficiency_with, hardware_spec
from meshtrain.trainer.config.mesh_shape import mesh_sizes
from meshtrain.trainer.planning.cost_estimate import on_hardware
from meshtrain.trainer.planning.experiment_prediction import predict_experiment, workload_of
from meshtrain.trainer.planning.flops import param_count
from meshtrain.trainer.planning.layout_search import plan_layouts
from meshtrain.trainer.planning.performance import Layout, expected_slowest, predict_step
from meshtrain.trainer.planning.published import compare, published_runs, summarize
from meshtrain.trainer.planning.validation_plot import GOAL_BAND, MOST_NAMED, validation_figure
from meshtrain.trainer.step.partition import batch_split_problem

AXES = ("data", "fsdp", "sequence", "tensor")


@pytest.fixture(scope="module")
def comparisons():
    return [compare(run) for run in published_runs()]


# Rows beyond the goal's 15%, each with the bound it is held to and why (BENCHMARKS.md, "Predicted
# against published"). MT-NLG published 126 TFLOP/s per A100 where Megatron-LM's own run of the same
# model and layout on the same 2240 GPUs reached 159; its steps are about 7.5 s longer than predicted
# at all three scales, a per-step cost no layout term carries; Megatron-LM's 2022 runs of the same
# model on the same A100s (Korthikanti et al.) are predicted within 7%, and BLOOM 176B, on the same
# DeepSpeed pipeline engine, within 0.2%.
KNOWN_MISSES = {"MT-NLG 530B": 0.22}


def test_predictions_match_published_runs_and_beat_a_constant_mfu(comparisons):
    """The issue's goal: median |error| <= 7% of the published MFU over a set spanning TPUs and GPUs,
    1.7B to 1T parameters, 8 to 16384 chips, sequences of 2048 to 131072 tokens; and well ahead of
    the constant MFU per kind it replaces. Every row but KNOWN_MISSES' is within the goal's 15%, and
    those within their own bounds. Rows held out of the fit are held to the same bounds: PaLM 540B
    among them, which checks the TPU v4 matmul ceiling fitted to MaxText's v4 rows alone, Megatron-LM's
    2022 A100 runs with full and selective recompute, Megatron-Core's H100 table from 1.7B to 462B and
    NeMo's recipes."""
    summary = summarize(comparisons)
    kinds = {c.run.spec.platform for c in comparisons}
    assert kinds == {"tpu", "gpu"} and summary.count >= 100
    assert max(c.run.work.seq_len for c in comparisons) >= 131072
    assert summary.median_abs_error <= 0.07, summary

    def allowed(name: str) -> float:
        return next((bound for prefix, bound in KNOWN_MISSES.items() if name.startswith(prefix)), 0.15)

    beyond = {c.run.name: round(c.error, 3) for c in comparisons if abs(c.error) > allowed(c.run.name)}
    assert not beyond, beyond
    held_out = {c.run.name: c.error for c in comparisons if c.run.held_out}
    assert len(held_out) >= 14 and all(abs(e) <= allowed(name) for name, e in held_out.items()), held_out
    assert abs(held_out["PaLM 540B, 6144 TPU v4"]) <= 0.05, held_out
    assert summary.median_abs_error < summary.baseline_median_abs_error / 3, summary
    # Far from typical (the long-sequence run, the 1T model, 32 slices over DCN) the model stays close
    # where a constant cannot follow.
    far = [c for c in comparisons if c.run.work.seq_len > 8192 or "32x" in c.run.name or "1008B" in c.run.name]
    assert far and all(abs(c.error) < 0.25 for c in far)
    assert sum(abs(c.error) for c in far) < sum(abs(c.baseline_error) for c in far)


def test_what_recompute_costs_is_predicted_as_megatron_measured_it(comparisons):
    """Korthikanti et al. 2022 timed the same four models and layouts twice, with full recompute and
    with selective recompute (only the attention's q.k^T, softmax and p.v redone) plus sequence
    parallelism, and measured 29-32% more throughput. The model, given both layouts, predicts each
    gain within 7% of the measured one: what a remat policy costs is priced from the work it redoes."""
    by_name = {c.run.name: c for c in comparisons}
    for model, gpus in (("GPT 22B", 8), ("GPT-3 175B", 64), ("GPT 530B", 280), ("GPT 1T", 512)):
        full = by_name[f"Megatron-LM 2022 {model}, {gpus} A100, full recompute"]
        selective = by_name[f"Megatron-LM 2022 {model}, {gpus} A100, selective recompute + sequence parallel"]
        assert (full.run.layout.remat, selective.run.layout.remat) == ("full", "save_dots")
        published = selective.run.published_tokens_per_s_per_chip() / full.run.published_tokens_per_s_per_chip()
        predicted = selective.prediction.tokens_per_s / full.prediction.tokens_per_s
        assert 1.28 < published < 1.33
        assert predicted / published == pytest.approx(1, abs=0.07), (model, predicted, published)


def test_validation_plot_of_many_misses_names_the_worst_and_counts_the_rest(comparisons):
    """A file of runs far outside the band (a team's own, through --runs) still gives a readable
    picture: every point inside the axes, the worst MOST_NAMED named, the rest counted."""
    far = [
        dataclasses.replace(
            c,
            run=dataclasses.replace(c.run, name=f"run {i}"),
            predicted_mfu=c.published_mfu * (1.5 + i / 100),
            error=0.5 + i / 100,
        )
        for i, c in enumerate(comparisons[:40])
    ]
    ax, notes = validation_figure(far).axes
    listed = notes.texts[0].get_text()
    assert all(f"run {i}:" in listed for i in range(40 - MOST_NAMED, 40))  # the worst, by error
    assert "run 0:" not in listed and f"and {40 - MOST_NAMED} more" in listed
    assert ax.get_ylim()[1] >= max(100 * c.predicted_mfu for c in far)


def test_validation_plot_draws_every_run_where_the_table_puts_it(comparisons, capsys, tmp_path):
    """`--validate --plot` draws what the table says: one model point per published run at (published,
    predicted) MFU, one baseline ring per run at the constant-MFU prediction, and the runs outside the
    goal's band numbered and named under the axes."""
    figure = validation_figure(comparisons)
    ax, notes = figure.axes
    drawn = [tuple(xy) for collection in ax.collections[1:] for xy in collection.get_offsets()]
    model_points = sorted(xy for xy in drawn[len(comparisons) :])
    baseline = sorted(drawn[: len(comparisons)])
    expected_points = sorted((100 * c.published_mfu, 100 * c.predicted_mfu) for c in comparisons)
    expected_baseline = sorted(
        (100 * c.published_mfu, 100 * c.published_mfu * (1 + c.baseline_error)) for c in comparisons
    )
    np.testing.assert_allclose(np.array(model_points), np.array(expected_points), rtol=1e-9)
    np.testing.assert_allclose(np.array(baseline), np.array(expected_baseline), rtol=1e-9)
    outside = [c.run.name for c in comparisons if abs(c.error) > GOAL_BAND]
    listed = notes.texts[0].get_text()
    assert outside and all(f"{i}. {name}:" in listed for i, name in enumerate(outside, start=1))
    png = tmp_path / "validation.png"
    code, out, _ = run_plan(capsys, "--validate", "--plot", str(png))
    assert code == 0 and "median |error|" in out
    held_out = [c for c in comparisons if c.run.held_out]  # the out-of-sample check has its own line
    assert (
        f"{len(held_out)} of them held out of the fit: median |error| {summarize(held_out).median_abs_error:.1%}" in out
    )
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


YOUR_RUN = """
sources: {mine: "our cluster, 2026-12-04"}
models: {small: {preset: llama2-7b, num_layers: 8}}
runs:
  - name: "our 8-layer Llama on 8 H100"
    source: mine
    hardware: h100
    model: small
    seq_len: 4096
    batch: 32
    mesh: {ici_fsdp: 8}
    remat: full
    attention: flash
    published: {mfu: 0.45, convention: palm}
"""


def test_validate_reads_your_own_runs_and_names_a_misspelt_key(capsys, tmp_path):
    """--runs: a team's own measured runs, laid out as published_runs.yaml, go through the same
    comparison; a row's misspelt key is one line naming it, never silently read as the default."""
    mine = tmp_path / "runs.yaml"
    mine.write_text(YOUR_RUN)
    code, out, _ = run_plan(capsys, "--validate", "--runs", str(mine), "--json")
    (row,) = json.loads(out)["runs"]
    assert code == 0 and row["name"] == "our 8-layer Llama on 8 H100" and row["published_mfu"] == pytest.approx(0.45)
    assert row["error"] == pytest.approx(row["predicted_mfu"] / 0.45 - 1)
    mine.write_text(YOUR_RUN.replace("    remat: full", "    remat: full\n    pipline: 4"))
    code, out, err = run_plan(capsys, "--validate", "--runs", str(mine))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "runs[0]: unknown key 'pipline'" in err and "pipeline" in err, err


@pytest.mark.parametrize(
    "edit, words",
    [
        (("batch: 32", "batch: -32"), ["batch=-32", "positive whole number"]),
        (("batch: 32", "batch: 30"), ["batch=30", "8 data x fsdp replicas", "multiple of 8"]),
        (("batch: 32", "batch: 32\n    microbatches: 3"), ["batch=32", "3 microbatches", "multiple of 24"]),
        (("ici_fsdp: 8", "ici_fsdp: eight"), ["mesh.ici_fsdp='eight'", "positive whole number"]),
        (("ici_fsdp: 8", "ici_fsdp: 16"), ["join 16 chips", "at most 8", "dcn_"]),
        (("{ici_fsdp: 8}", "fsdp"), ["mesh='fsdp'", "mapping"]),
        (("mfu: 0.45", "mfu: 1.45"), ["mfu=1.45", "145% of h100's peak"]),
        (("mfu: 0.45", "mfu: 0"), ["published.mfu=0", "positive number"]),
        (("remat: full", "remat: full\n    optimizer_sharded: 'no'"), ["optimizer_sharded='no'", "true or false"]),
        (("remat: full", "remat: full\n    pipeline_virtual: 0"), ["pipeline_virtual=0", "positive whole number"]),
        (("runs:", "runs:\n  - {}"), ["runs[0]: missing model"]),
        (("model: small", "model: smal"), ["model='smal'", "neither under models: (small)", "llama2-70b"]),
    ],
)
def test_a_run_that_cannot_have_happened_is_one_line_naming_its_key(capsys, tmp_path, edit, words):
    """A row of --runs is what a run did: its sizes are whole, its batch splits over its replicas and
    microbatches, its ICI axes fit one slice or server, and its figure is under the chip's peak.
    Anything else is one line naming the key, not a traceback or a prediction of nonsense."""
    mine = tmp_path / "runs.yaml"
    mine.write_text(YOUR_RUN.replace(*edit))
    code, out, err = run_plan(capsys, "--validate", "--runs", str(mine))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1, err
    assert all(w in err for w in words), err


def test_a_row_may_name_a_model_preset_without_a_models_entry(capsys, tmp_path):
    """`model: llama2-70b` reads the preset as it ships, as `models: {m: {preset: llama2-70b}}` would."""
    predictions = []
    for models, model in (("{m: {preset: llama2-70b}}", "m"), ("{}", "llama2-70b")):
        mine = tmp_path / "runs.yaml"
        text = YOUR_RUN.replace("{small: {preset: llama2-7b, num_layers: 8}}", models)
        mine.write_text(text.replace("model: small", f"model: {model}").replace("batch: 32", "batch: 64"))
        code, out, err = run_plan(capsys, "--validate", "--runs", str(mine), "--json")
        assert code == 0, err
        predictions.append(json.loads(out)["runs"][0]["predicted_mfu"])
    assert predictions[0] == predictions[1] > 0


def test_two_runs_of_one_name_are_refused(capsys, tmp_path):
    mine = tmp_path / "runs.yaml"
    row = YOUR_RUN.split("runs:\n")[1]
    mine.write_text(YOUR_RUN + row)
    code, _, err = run_plan(capsys, "--validate", "--runs", str(mine))
    assert code == 2 and "runs[1]: name 'our 8-layer Llama on 8 H100' is runs[0]'s too" in err, err


LLM_FOUNDRY_RUNS = Path(__file__).resolve().parents[1] / "benchmarks" / "runs" / "llm_foundry_mpt.yaml"


def test_runs_the_model_never_saw_are_predicted_within_the_goal():
    """llm-foundry's published MPT benchmarks (benchmarks/runs/llm_foundry_mpt.yaml: PyTorch FSDP on
    8-512 GPUs, 125M to 70B parameters) are in neither the validation set nor the family fit. On A100s
    at sequences up to 4096, where the attention kernel is a small share of the step, the model holds
    the issue's median goal on them too (BENCHMARKS.md, "Out of sample: llm-foundry's MPT tables", says
    why the longer sequences and the 2023 H100 rows are predicted fast)."""
    seen = {run.name for run in published_runs()}
    runs = published_runs(LLM_FOUNDRY_RUNS)
    a100_short = [r for r in runs if r.spec.kind.startswith("a100") and r.work.seq_len <= 4096]
    assert len(a100_short) >= 90 and not seen & {r.name for r in runs}
    assert summarize([compare(run) for run in a100_short]).median_abs_error <= 0.07


def test_every_part_of_a_step_follows_its_cause():
    """Starving one resource makes its part of the step, and only that part, dominate."""
    cfg = load_experiment("palm-540b-v4-6144")
    spec = hardware_spec("tpu-v4")
    base = predict_experiment(cfg, spec, 6144)
    assert "over dcn" not in base.bottleneck
    slow_dcn = hardware_spec("tpu-v4", {"dcn_bandwidth_bytes_per_s": 1e7})
    starved = predict_experiment(cfg, slow_dcn, 6144)
    assert "data all-reduce over dcn" in starved.bottleneck and starved.step_s > base.step_s
    slow_ici = predict_experiment(cfg, hardware_spec("tpu-v4", {"ici_link_bandwidth_bytes_per_s": 1e8}), 6144)
    ici_share = [sum(s for name, s in p.parts.items() if "over ici" in name) / p.step_s for p in (base, slow_ici)]
    assert "over ici" in slow_ici.bottleneck and ici_share[1] > 2 * ici_share[0]
    slow_hbm = hardware_spec("tpu-v4", {"hbm_bandwidth_bytes_per_s": 1e10})
    assert "memory-bound" in predict_experiment(cfg, slow_hbm, 6144).bottleneck
    # More bandwidth never makes a step slower; HFU counts remat on top of MFU.
    fast = predict_experiment(cfg, hardware_spec("tpu-v4", {"dcn_bandwidth_bytes_per_s": 1e12}), 6144)
    assert fast.step_s <= base.step_s and base.hfu > base.mfu
    assert sum(base.parts.values()) == pytest.approx(base.step_s)


def test_more_slices_wait_longer_for_the_slowest():
    """A synchronous step over N slices ends when the slowest does: nothing to wait for on one slice,
    a wait that grows with N (the expected maximum of N normal draws) beyond it."""
    assert expected_slowest(1) == 0.0
    # Exact expected maxima of 2 and 32 standard normals: 1/sqrt(pi) and 2.0697 (Blom within 5%).
    assert expected_slowest(2) == pytest.approx(0.5642, rel=0.05)
    assert expected_slowest(32) == pytest.approx(2.0697, rel=0.05)
    spec = hardware_spec("tpu-v5e")
    family = efficiency_with(efficiency_family(spec), {"straggler_spread": 0.03})  # whatever the fit chose
    steps = []
    for slices in (1, 2, 8, 32):
        ici, dcn = {**dict.fromkeys(AXES, 1), "fsdp": 256}, {**dict.fromkeys(AXES, 1), "data": slices}
        work = workload_of(load_experiment(None, ["model=llama2-7b"]), "tpu", batch=256 * slices)  # weak scaling
        prediction = predict_step(work, Layout(ici, dcn), spec, family, 197e12, 819e9)
        waits = [s for name, s in prediction.parts.items() if name.startswith("waiting for the slowest")]
        assert bool(waits) == (slices > 1)
        steps.append(prediction.step_s)
    assert steps == sorted(steps) and steps[-1] > steps[0]


def test_a_kinds_matmul_ceiling_and_a_sharded_optimizer_move_only_their_parts():
    """The measured matmul ceiling slows the matmuls and nothing else; ZeRO-1 divides the optimizer
    update by the data replicas and nothing else."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work = workload_of(cfg, "gpu", batch=64)
    ici, dcn = {**dict.fromkeys(AXES, 1), "fsdp": 8}, {**dict.fromkeys(AXES, 1), "data": 8}
    h100 = hardware_spec("h100")
    family = efficiency_family(h100)
    at_ceiling = predict_step(work, Layout(ici, dcn), h100, family, 989e12, 3.35e12).parts
    at_peak = predict_step(
        work, Layout(ici, dcn), hardware_spec("h100", {"matmul_ceiling": 1.0}), family, 989e12, 3.35e12
    ).parts
    compute = "compute: matmuls and attention"
    assert at_ceiling[compute] > at_peak[compute]
    assert at_ceiling[compute] <= at_peak[compute] / h100.matmul_ceiling * (1 + 1e-9)
    assert (
        at_ceiling["memory-bound: norms, activations, softmax"] == at_peak["memory-bound: norms, activations, softmax"]
    )
    sharded = predict_step(work, Layout(ici, dcn, optimizer_sharded=True), h100, family, 989e12, 3.35e12).parts
    assert sharded["optimizer update"] == pytest.approx(at_ceiling["optimizer update"] / 8)
    assert sharded[compute] == at_ceiling[compute]


def test_overlapped_tensor_collectives_and_fused_accumulation_move_only_their_parts():
    """A run that overlaps its tensor collectives with the layer's matmuls (Megatron-Core's
    --tp-comm-overlap) exposes only what outlasts them: next to nothing on NVLink, and on a starved
    link at most the matmuls' time less. Fusing gradient accumulation into the matmuls removes the
    accumulation's pass over the float32 gradients from the optimizer part, and nothing else."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work = workload_of(cfg, "gpu", batch=64)
    ici, dcn = {**dict.fromkeys(AXES, 1), "tensor": 8}, {**dict.fromkeys(AXES, 1), "data": 8}
    tensor, compute, update = "exposed tensor all-reduce over ici", "compute: matmuls and attention", "optimizer update"
    for nvlink in (450e9, 2e9):
        spec = hardware_spec("h100", {"ici_link_bandwidth_bytes_per_s": nvlink})
        family = efficiency_family(spec)
        plain, overlapped, fused = (
            predict_step(work, Layout(ici, dcn, 4, **extra), spec, family, 989e12, 3.35e12).parts
            for extra in ({}, {"collective_matmul": True}, {"fused_accumulation": True})
        )
        assert plain[tensor] > 0 and overlapped.get(tensor, 0.0) < plain[tensor]
        assert overlapped.get(tensor, 0.0) >= plain[tensor] - plain[compute] - 1e-12
        if nvlink > 1e10:  # only the embedding's and the logits' reductions, which no layer's matmuls cover
            assert overlapped[tensor] < 0.02 * plain[tensor]
        assert {k: v for k, v in overlapped.items() if k != tensor} == {k: v for k, v in plain.items() if k != tensor}
        local_params = param_count(work.model).total / 8
        accumulation = 3 * local_params * 3 * work.param_bytes / (3.35e12 * family.hbm_efficiency)
        assert plain[update] - fused[update] == pytest.approx(accumulation)
        assert {k: v for k, v in fused.items() if k != update} == {k: v for k, v in plain.items() if k != update}


def test_sequence_parallelism_splits_only_the_norms_and_residual_adds():
    """Megatron's sequence parallelism (its --sequence-parallel) runs each tensor rank's norms,
    dropout and residual adds on its own 1/tensor share of the tokens, where plain tensor parallelism
    repeats them on every rank: the memory-bound part falls by exactly 1 - 1/tensor of those bytes
    (two norms and two residual adds of d_model per token and pass in a sequential block), and the
    collectives, which move the same bytes as a reduce-scatter and an all-gather, do not change."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work = workload_of(cfg, "gpu", batch=64)
    assert work.model.block == "sequential"
    ici, dcn = {**dict.fromkeys(AXES, 1), "tensor": 8}, {**dict.fromkeys(AXES, 1), "data": 8}
    spec = hardware_spec("h100")
    family = efficiency_family(spec)
    memory = "memory-bound: norms, activations, softmax"
    plain, split = (
        predict_step(work, Layout(ici, dcn, 4, remat="full", sequence_parallel=sp), spec, family, 989e12, 3.35e12).parts
        for sp in (False, True)
    )
    tokens = 64 * work.seq_len / 8  # per chip and step, over 4 microbatches
    passes = 4  # forward, backward (twice the forward) and the full-remat replay
    residual = work.model.num_layers * passes * tokens * 10 * work.model.d_model * work.compute_bytes
    assert plain[memory] - split[memory] == pytest.approx(residual * (1 - 1 / 8) / (3.35e12 * family.hbm_efficiency))
    assert {k: v for k, v in split.items() if k != memory} == {k: v for k, v in plain.items() if k != memory}


def test_an_eager_loss_and_the_data_reductions_tail_move_only_their_parts():
    """A loss computed pass by pass over float32 logits (Megatron-LM's) moves 52 bytes per logit
    through HBM where a fused one moves 16: the memory-bound part grows by exactly the difference and
    nothing else moves. The data-parallel reduction hides behind the backward pass but for its tail,
    the input embedding's and the first layer's gradients, which come last: with all the rest hidden
    that tail is what remains exposed."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work = workload_of(cfg, "gpu", batch=64)
    ici, dcn = {**dict.fromkeys(AXES, 1), "tensor": 8}, {**dict.fromkeys(AXES, 1), "data": 8}
    spec = hardware_spec("h100")
    family = efficiency_with(efficiency_family(spec), {"data_overlap": 1.0})
    memory, data = "memory-bound: norms, activations, softmax", "exposed data all-reduce over dcn"
    fused, eager = (
        predict_step(work, Layout(ici, dcn, 4, eager_cross_entropy=eager), spec, family, 989e12, 3.35e12).parts
        for eager in (False, True)
    )
    logits = 4 * (64 * work.seq_len / 8 / 4) * (work.model.vocab_size / 8)  # per chip, 4 microbatches
    assert eager[memory] - fused[memory] == pytest.approx((52 - 16) * logits / (3.35e12 * family.hbm_efficiency))
    assert {k: v for k, v in eager.items() if k != memory} == {k: v for k, v in fused.items() if k != memory}
    model, count = work.model, param_count(work.model)
    tail_params = model.vocab_size * model.d_model + (count.total - count.embedding) / model.num_layers
    tail_bytes = tail_params / 8 * work.gradient_bytes  # the tensor shard's
    ring = 2 * tail_bytes * 7 / 8 / (spec.dcn_bandwidth_bytes_per_s * family.dcn_efficiency)
    long_step = workload_of(cfg, "gpu", batch=1024)
    one, four = (predict_step(long_step, Layout(ici, dcn, m), spec, family, 989e12, 3.35e12).parts for m in (1, 4))
    assert one[data] == pytest.approx(ring)  # one microbatch: its backward hides all but the tail
    assert four[data] > 2 * ring  # four: the last one's backward is a quarter as long, and hides less


def test_a_pipeline_bubble_waits_for_a_neighbours_whole_microbatch():
    """In the bubble a stage waits for its neighbours' microbatches, collectives included: slower
    tensor links lengthen it by (stages - 1) / virtual stages of one microbatch's extra tensor time,
    and more virtual stages shorten it in proportion."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work = workload_of(cfg, "gpu", batch=64)
    ici, dcn = {**dict.fromkeys(AXES, 1), "tensor": 8}, {**dict.fromkeys(AXES, 1), "data": 2}
    family = efficiency_family(hardware_spec("h100"))
    tensor, bubble = "exposed tensor all-reduce over ici", "pipeline bubble"
    fast, slow = (
        predict_step(work, Layout(ici, dcn, 8, pipeline=4), spec, family, 989e12, 3.35e12).parts
        for spec in (hardware_spec("h100"), hardware_spec("h100", {"ici_link_bandwidth_bytes_per_s": 5e9}))
    )
    assert slow[bubble] - fast[bubble] == pytest.approx(3 * (slow[tensor] - fast[tensor]) / 8)
    interleaved = predict_step(
        work, Layout(ici, dcn, 8, pipeline=4, pipeline_virtual=3), hardware_spec("h100"), family, 989e12, 3.35e12
    ).parts
    assert interleaved[bubble] == pytest.approx(fast[bubble] / 3)


def test_dropout_costs_its_masks_and_slows_a_fused_kernel_by_the_familys_figure():
    """A run that says dropout writes each of a block's two hidden dropout masks (1 byte, fused into
    the residual adds) and reads it back in the backward; a dense kernel adds a pass of its own over
    the scores; a fused kernel draws the mask inside, its time divided by the family's dropout
    efficiencies. The memory-bound part grows by exactly those bytes, and nothing else but the fused
    attention's time moves."""
    cfg = load_experiment(None, ["model=llama2-7b"])
    work, spec = workload_of(cfg, "gpu", batch=8), hardware_spec("h100")
    model, tokens, heads = work.model, 8 * work.seq_len, work.model.num_heads // 8
    ici, dcn = {**dict.fromkeys(AXES, 1), "tensor": 8}, dict.fromkeys(AXES, 1)
    memory, compute = "memory-bound: norms, activations, softmax", "compute: matmuls and attention"

    def parts(family, **layout):
        return predict_step(work, Layout(ici, dcn, 1, **layout), spec, family, 989e12, 3.35e12).parts

    nvidia = efficiency_family(spec)
    hbm = 3.35e12 * nvidia.hbm_efficiency
    for attention in ("dense", "flash"):
        for remat in ("none", "save_dots", "full"):
            off, on = (parts(nvidia, remat=remat, attention=attention, dropout=d) for d in (False, True))
            hidden = 2 * model.d_model * (1 + 5 + (remat == "full"))  # mask; gradient and mask in, gradient out
            scores = heads * work.seq_len * (5 + 5 + 5 * (remat != "none")) if attention == "dense" else 0
            assert on[memory] - off[memory] == pytest.approx(model.num_layers * tokens * (hidden + scores) / hbm)
            assert {k: v for k, v in on.items() if k not in (memory, compute)} == pytest.approx(
                {k: v for k, v in off.items() if k not in (memory, compute)}
            )
            if attention == "dense":
                assert on[compute] == pytest.approx(off[compute])
    # A fused kernel at half its rate adds its attention time once; at a quarter, three times.
    slowed = {
        rate: parts(
            efficiency_with(nvidia, {"dropout_forward_efficiency": rate, "dropout_backward_efficiency": rate}),
            attention="flash",
            dropout=True,
        )[compute]
        - parts(nvidia, attention="flash")[compute]
        for rate in (1.0, 0.5, 0.25)
    }
    assert slowed[1.0] == pytest.approx(0.0, abs=1e-12) and slowed[0.5] > 0
    assert slowed[0.25] == pytest.approx(3 * slowed[0.5])


def test_attention_dominates_long_sequences_and_flash_beats_dense_there():
    cfg = load_experiment(None, ["model=llama2-7b", "data.seq_len=32768", "model.max_seq_len=32768"])
    spec, family = hardware_spec("h100"), efficiency_family(hardware_spec("h100"))
    work = workload_of(cfg, "gpu", batch=64)
    ici, dcn = dict.fromkeys(AXES, 1), dict.fromkeys(AXES, 1)
    ici["tensor"], dcn["fsdp"] = 8, 8
    step = {
        kernel: predict_step(work, Layout(ici, dcn, 1, "full", kernel), spec, family, 989e12, 3.35e12).step_s
        for kernel in ("flash", "dense")
    }
    assert step["flash"] < step["dense"]


def test_planner_recovers_a_layout_at_least_as_good_as_palms():
    """PaLM 540B on 2 x 3072 TPU v4: the paper's layout (12-way tensor x 256-way FSDP per pod, data
    over DCN) is among the candidates, and the planner's best is at least as fast by the model."""
    cfg, spec = on_hardware(load_experiment("palm-540b-v4-6144"), "tpu-v4")
    candidates = plan_layouts(cfg, spec, [6144])
    paper = [
        c
        for c in candidates
        if c.layout.ici["tensor"] == 12 and c.layout.ici["fsdp"] == 256 and c.layout.dcn["data"] == 2
    ]
    assert paper and all(c.num_slices == 2 for c in candidates)
    best = min(candidates, key=lambda c: c.prediction.step_s)
    assert best.prediction.step_s <= min(c.prediction.step_s for c in paper)
    assert all(c.memory_bytes <= spec.hbm_bytes for c in candidates)


def test_every_candidate_splits_every_stage_of_a_batch_ramp():
    """PaLM ramps 512 -> 1024 -> 2048 sequences: a layout with more batch replicas than the first
    stage's microbatch, which the run itself would refuse, is never proposed."""
    cfg, spec = on_hardware(load_experiment("palm-540b-v4-6144"), "tpu-v4")
    candidates = plan_layouts(cfg, spec, [6144, 8192])
    assert candidates
    for c in candidates:
        trial = load_experiment("palm-540b-v4-6144", c.overrides)
        assert batch_split_problem(trial, mesh_sizes(trial, c.chips), 1) is None, c.layout.describe()


@pytest.mark.parametrize(
    "overrides, kind, chips, low, high",
    [  # Llama 2 70B on 512 H100s, 1024 x 4096 tokens (the largest scale of NVIDIA's DGX Cloud MaxText
        # recipe): 70B-class bf16 runs on H100 publish 38-52% MFU (Llama 3 405B 38-43%, NeMo's FSDP2
        # Llama 3 70B 39%, MaxText's Llama 2 70B 47% and Llama 3 70B 52%). On 64 H100s the planner's
        # best is save_dots at 54%, above that range (BENCHMARKS.md, "Predicted against published").
        (
            ["model=llama2-70b", "data.seq_len=4096", "train.batch_size=1024"],
            "h100",
            512,
            0.38,
            0.52,
        ),
        # GPT-3 175B on 1024 A100s: Narayanan et al. 2021 project 140 TFLOP/s per GPU (45% of peak,
        # with recompute); with selective recompute Korthikanti et al. 2022 (arXiv 2205.05198) reach
        # 51.4% MFU for 175B. The published range: 35-55%.
        (["model=gpt3-175b", "data.seq_len=2048", "train.batch_size=1536"], "a100-80gb", 1024, 0.35, 0.55),
    ],
)
def test_planner_mfu_for_gpu_runs_falls_in_published_ranges(overrides, kind, chips, low, high):
    cfg, spec = on_hardware(load_experiment(None, overrides), kind)
    best = min(plan_layouts(cfg, spec, [chips]), key=lambda c: c.prediction.step_s)
    assert low <= best.prediction.mfu <= high, (best.layout.describe(), best.prediction.mfu)


def run_plan(capsys, *argv):
    code = plan_main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_plan_cli_table_json_and_chosen_overrides(capsys):
    code, out, _ = run_plan(capsys, "palm-540b-v4-6144", "--chips", "6144")
    assert code == 0 and "bottleneck" in out and "launch: meshtrain launch palm-540b-v4-6144" in out
    code, out, _ = run_plan(capsys, "palm-540b-v4-6144", "--chips", "6144", "--json")
    best = json.loads(out)["candidates"][0]
    # The chosen layout's overrides describe a run meshtrain accepts, on the same chips.
    cfg = load_experiment("palm-540b-v4-6144", best["overrides"])
    assert cfg.mesh.ici_tensor * cfg.mesh.ici_fsdp * cfg.mesh.ici_data * cfg.hardware.num_slices == 6144
    assert predict_experiment(cfg, hardware_spec("tpu-v4"), 6144).step_s == pytest.approx(
        best["prediction"]["step_s"], rel=1e-6
    )


def test_deadline_and_budget_pick_the_cheapest_and_the_fastest(capsys):
    args = ["palm-540b-v4-6144", "--json", "--top", "50"]
    code, out, _ = run_plan(capsys, *args, "--deadline-days", "60")
    within = json.loads(out)["candidates"]
    assert code == 0 and all(c["days"] <= 60 for c in within)
    dollars = [c["usd_by_tier"]["on_demand"] for c in within]
    assert dollars == sorted(dollars)
    code, out, _ = run_plan(capsys, *args, "--budget-usd", "30e6")
    fastest = json.loads(out)["candidates"]
    assert all(c["usd_by_tier"]["on_demand"] <= 30e6 for c in fastest)
    assert [c["days"] for c in fastest] == sorted(c["days"] for c in fastest)


@pytest.mark.parametrize(
    "argv, words",
    [
        (["palm-540b-v4-6144", "--deadline-days", "0.5"], ["--deadline-days 0.5", "fastest reachable is"]),
        (["palm-540b-v4-6144", "--budget-usd", "1000"], ["--budget-usd 1000", "cheapest reachable is"]),
        (["palm-540b-v4-6144", "--chips", "1000"], ["--chips 1000", "nearest chip counts that work:", "1024"]),
        (["palm-540b-v4-6144", "--hardware", "tpu-v9"], ["hardware='tpu-v9'", "known:"]),
        (["--calibrate", "/nonexistent/run"], ["--calibrate /nonexistent/run", "config.yaml"]),
        (["default", "--hardware", "h100", "--chips", "8", "--aot"], ["--aot", "h100 is not a TPU"]),
        (["default", "--plot", "x.png"], ["--plot x.png", "--validate"]),
        (["--validate", "--plot", "/nonexistent/dir/x.png"], ["--plot /nonexistent/dir/x.png", "no directory"]),
        # A cpu 'chip' is a whole machine, and no figure says how fast machines talk to each other.
        (["default", "--hardware", "cpu", "--chips", "8"], ["mesh.dcn_data=8", "dcn_bandwidth_bytes_per_s"]),
    ],
)
def test_bad_input_is_one_line_naming_what_would_work(capsys, argv, words):
    code, out, err = run_plan(capsys, *argv)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert all(w in err for w in words), err


def test_aot_lets_xla_decide_the_memory_of_the_best_candidates(capsys):
    """--aot compiles the best candidates for their TPU topology (libtpu, no TPU): XLA's peak per chip
    replaces the analytic estimate for those, and the rest keep theirs."""
    code, out, _ = run_plan(capsys, "default", "--hardware", "tpu-v4", "--chips", "8", "--aot", "2", "--json")
    candidates = json.loads(out)["candidates"]
    assert code == 0 and [c["memory_source"] for c in candidates[:3]] == ["xla", "xla", "analytic"]
    assert all(0 < c["memory_bytes_per_chip"] <= c["memory_limit_bytes"] for c in candidates)


def _train(run_dir, data_dir, *overrides):
    """A real `meshtrain train` on one CPU device (no virtual devices: the plan predicts one chip)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    command = [
        sys.executable,
        "-m",
        "meshtrain.tools",
        "train",
        "--no-progress",
        f"run_dir={run_dir}",
        f"data.data_dir={data_dir}",
        "model.vocab_size=512",
        "train.steps=60",
        "train.log_every=10",
        "checkpoint.every=1000",
        "train.eval_every=0",
        *overrides,
    ]
    subprocess.run(command, check=True, env=env, capture_output=True)


def _median_step(run_dir):
    times = [json.loads(line)["step_time_s"] for line in open(f"{run_dir}/metrics.jsonl") if "step_time_s" in line]
    times = sorted(times[1:])
    return times[len(times) // 2]


def _calibrated_against_measured(tmp_path, data_dir, capsys, wide):
    """Train the default model and the wide one back to back, calibrate on the first, predict the
    second: (the plan's JSON report, the wide run's measured median step)."""
    _train(tmp_path / "default", data_dir)
    _train(tmp_path / "wide", data_dir, *wide)
    code, out, _ = run_plan(
        capsys,
        "default",
        f"data.data_dir={data_dir}",
        "model.vocab_size=512",
        *wide,
        "--calibrate",
        str(tmp_path / "default"),
        "--json",
    )
    assert code == 0
    return json.loads(out), _median_step(tmp_path / "wide")


def test_calibrated_on_one_cpu_run_predicts_another_size_within_20_percent(data_dir, tmp_path, capsys):
    """The issue's test: calibrate on a CPU run of the default experiment (its model, the prepared
    512-piece tokenizer), then predict a wider model on the same CPU within 20% of what it measures.
    The two runs are trained back to back so the shared machine's load is the same for both. A
    shared machine can still slow one whole run alone (seen: the default model at 0.11 s per step
    where back-to-back pairs measure 0.076-0.087 s, 2 tries in 14), so a pair that misses is trained
    once more before the test fails: a wrong model misses on both."""
    wide = ["model.d_model=256", "model.num_heads=8", "model.d_ff=1024"]
    tries = []
    for attempt in ("first", "second"):
        report, measured = _calibrated_against_measured(tmp_path / attempt, data_dir, capsys, wide)
        assert report["fit_error_after"] <= report["fit_error_before"]
        tries.append(
            {
                "calibrated on (s)": report["measured_step_s"],
                "fitted": report["efficiencies"],
                "wide, uncalibrated (s)": report["prediction_before"]["step_s"],
                "wide, calibrated (s)": report["prediction"]["step_s"],
                "wide, measured (s)": measured,
            }
        )
        if report["prediction"]["step_s"] == pytest.approx(measured, rel=0.2):
            return
    pytest.fail(f"calibrated prediction off by more than 20% on both pairs: {json.dumps(tries)}")


def test_fitted_matmul_ceilings_recover_the_levels_that_made_the_steps():
    """The fit of the TPU kinds' ceilings (benchmarks/fit_efficiency_families.py) finds what it is
    for: steps made by a known family with v4 at 0.75 of v5e's matmul rate are fitted, from rates of
    0.5 and no ceilings, back to v4 at 0.75 (v5e at 1.0) and to the steps themselves. (At 2048 tokens
    the rates trade against each other, attention for matmul: the steps pin them, not each one.)"""
    from meshtrain.trainer.planning.calibrate import fit_with_ceilings, with_ceilings
    from meshtrain.trainer.planning.published import observation

    rows = [r for r in published_runs() if r.spec.kind in ("tpu-v4", "tpu-v5e") and "x " in r.name][:14]
    assert {r.spec.kind for r in rows} == {"tpu-v4", "tpu-v5e"}
    truth = efficiency_with(
        efficiency_family(rows[0].spec), {"matmul_efficiency": 0.9, "attention_efficiency": 0.6, "hbm_efficiency": 0.8}
    )
    made = with_ceilings([observation(r) for r in rows], {"tpu-v4": 0.75, "tpu-v5e": 1.0})
    steps = [dataclasses.replace(o, step_s=o.predicted_s(truth)) for o in made]
    start = efficiency_with(truth, dict.fromkeys(("matmul_efficiency", "attention_efficiency", "hbm_efficiency"), 0.5))
    family, ceilings = fit_with_ceilings(start, steps, {"tpu-v4", "tpu-v5e"})
    assert ceilings["tpu-v5e"] == 1.0 and ceilings["tpu-v4"] == pytest.approx(0.75, rel=0.02), ceilings
    for o in with_ceilings(steps, ceilings):
        assert o.predicted_s(family) == pytest.approx(o.step_s, rel=0.02), o.label
