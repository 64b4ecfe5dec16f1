"""The live tracker and the run report: MFU/HFU/dollars/ETA in metrics.jsonl, goodput across restarts,
report.json/report.md and their plots, also when a run is interrupted."""

from __future__ import annotations

import json
import os
import shutil
import signal

import jax
import pytest

import meshtrain.trainer.run.train as train_module
from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.hardware import hardware_spec
from meshtrain.trainer.formatting import format_duration
from meshtrain.trainer.planning.peaks import price_per_chip_hour
from meshtrain.trainer.run.train import train
from meshtrain.trainer.tracking.goodput import PARTS, redone_step_times
from meshtrain.trainer.tracking.run_arithmetic import CONVENTION_TEXT, run_arithmetic
from meshtrain.trainer.tracking.tracker import Tracker

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def experiment(small_experiment):
    """(run_dir, *overrides) -> the small experiment in run_dir, without evaluation."""
    return lambda run_dir, *overrides: small_experiment(f"run_dir={run_dir}", "train.eval_every=0", *overrides)


def train_lines(run_dir):
    return [r for r in map(json.loads, open(run_dir / "metrics.jsonl")) if "loss" in r]


def report(run_dir):
    return json.loads((run_dir / "report.json").read_text())


def assert_goodput_sums_to_wall(rep):
    goodput = rep["goodput"]
    assert set(goodput["parts_s"]) == set(PARTS)
    assert all(seconds >= 0 for seconds in goodput["parts_s"].values()), goodput["parts_s"]
    assert sum(goodput["parts_s"].values()) == pytest.approx(goodput["wall_s"], rel=1e-6)
    assert sum(goodput["parts_pct"].values()) == pytest.approx(100.0, abs=1e-6)
    assert goodput["wall_s"] == rep["wall_s"]


def test_live_metrics_cost_and_report_as_if_on_h100(experiment, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = experiment(
        run_dir,
        "train.steps=12",
        "train.log_every=3",
        "train.eval_every=6",
        "train.eval_batches=1",
        "checkpoint.every=6",
        "model.remat=full",
        "hardware.kind=h100",
    )
    summary = train(cfg, progress=False)
    price = price_per_chip_hour(hardware_spec("h100"))
    rep = report(run_dir)
    chips, peak = rep["hardware"]["chips"], rep["hardware"]["peak_flops_per_chip"]
    assert chips == jax.device_count() == 8 and peak == hardware_spec("h100").peak_bf16_flops

    lines = train_lines(run_dir)
    assert [r["step"] for r in lines] == [0, 3, 6, 9, 11]
    for r in lines:
        assert 0 < r["mfu"] < r["hfu"]  # full remat: the hardware redoes the forward pass
        # all chips' model FLOP/s over all chips' peak
        assert r["model_tflops_per_chip"] * 1e12 * chips / (chips * peak) == pytest.approx(r["mfu"], rel=1e-9)
        assert r["mfu"] == pytest.approx(rep["model_flops_per_token"] * r["tokens_per_sec"] / (chips * peak))
        assert r["cost_usd"] == pytest.approx(r["chip_hours"] * price, rel=1e-9)
        assert r["projected_cost_usd"] >= r["cost_usd"]
    costs, etas = [r["cost_usd"] for r in lines], [r["eta_s"] for r in lines]
    assert all(a < b for a, b in zip(costs, costs[1:]))
    assert etas[-1] == 0 and all(eta > 0 for eta in etas[:-1]) and etas[-2] < etas[1]
    assert lines[-1]["projected_cost_usd"] == pytest.approx(lines[-1]["cost_usd"])

    assert rep["status"] == "finished" and rep["steps"] == 12 and rep["tokens"] == 12 * 8 * 32
    assert rep["flops_convention_description"] == CONVENTION_TEXT
    assert rep["model_flops_total"] == pytest.approx(rep["model_flops_per_token"] * rep["tokens"])
    assert rep["hardware_flops_total"] > rep["model_flops_total"]
    assert rep["cost_usd"] == pytest.approx(rep["chip_hours"] * price) and rep["cost_usd"] >= costs[-1]
    assert rep["chip_hours"] == pytest.approx(rep["wall_s"] * chips / 3600)
    assert 0 < rep["mfu_median"] < rep["hfu_median"] and 0 < rep["mfu_mean"] < rep["hfu_mean"]
    assert rep["final_loss"] == pytest.approx(lines[-1]["loss"])
    assert rep["final_eval_loss"] == pytest.approx(summary.last_eval_loss)
    assert_goodput_sums_to_wall(rep)
    parts = rep["goodput"]["parts_s"]
    for part in ("productive", "compilation", "evaluation", "checkpointing", "startup"):
        assert parts[part] > 0, part
    assert parts["restart_loss"] == 0 and rep["goodput"]["steps_redone"] == 0

    for name in ("loss", "throughput", "cost"):
        data = (run_dir / rep["plots"][name]).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 1000
    markdown = (run_dir / "report.md").read_text()
    for text in (
        CONVENTION_TEXT,
        "| MFU |",
        "| productive steps |",
        "](plots/loss.png)",
        "](plots/cost.png)",
        "cost (on-demand) | $",
    ):
        assert text in markdown
    assert summary.report == str(run_dir / "report.md")
    assert not [p for p in run_dir.iterdir() if p.name.endswith(".tmp")]


def sigterm_at_call(n):
    """A jit_train_step whose step function sends this process SIGTERM on its n-th call, as a
    scheduler would: the loop's own handler turns it into a stop request."""
    real_jit_train_step = train_module.jit_train_step

    def jit_train_step(*args, **kwargs):
        step_fn, calls = real_jit_train_step(*args, **kwargs), []

        def step(state, batch):
            calls.append(1)
            if len(calls) == n:
                os.kill(os.getpid(), signal.SIGTERM)
            return step_fn(state, batch)

        return step

    return jit_train_step


def test_interrupted_run_reports_and_a_resume_counts_redone_steps(experiment, data_dir, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    common = ["train.log_every=1", "checkpoint.every=2"]
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "jit_train_step", sigterm_at_call(3))
        summary = train(experiment(run_dir, "train.steps=50", *common), progress=False)
    assert summary.interrupted and summary.end_step == 3
    rep = report(run_dir)
    assert rep["status"] == "interrupted" and rep["steps"] == 3 and rep["steps_configured"] == 50
    assert_goodput_sums_to_wall(rep)
    assert "interrupted at step 3 of 50" in (run_dir / "report.md").read_text()
    first = {r["step"]: r for r in train_lines(run_dir)}
    assert list(first) == [0, 1, 2] and first[2]["eta_s"] > 0

    # As if the process had been killed before its last checkpoint (step 3) landed: the next one
    # resumes from step 2 and computes step 2 again.
    shutil.rmtree(run_dir / "checkpoints" / "3")
    train(experiment(run_dir, "train.steps=5", *common), progress=False)
    rep = report(run_dir)
    goodput = rep["goodput"]
    assert rep["status"] == "finished" and rep["steps"] == 5
    assert goodput["steps_redone"] == 1
    assert goodput["parts_s"]["restart_loss"] == pytest.approx(first[2]["step_time_s"])
    assert [(s["start_step"], s["end_step"]) for s in goodput["segments"]] == [(0, 3), (2, 5)]
    assert_goodput_sums_to_wall(rep)
    assert "1 steps were computed twice" in (run_dir / "report.md").read_text()
    assert "Processes (restarts)" in (run_dir / "report.md").read_text()

    assert rep["cost_usd"] is None and rep["hardware"]["kind"] == "cpu"  # cpu has no price
    assert rep["hardware"]["chips"] == jax.process_count()  # a CPU is one chip, whatever XLA splits it into
    assert all(r["cost_usd"] is None and r["mfu"] > 0 for r in train_lines(run_dir))
    assert (run_dir / rep["plots"]["cost"]).read_bytes().startswith(PNG_MAGIC)  # chip-hours, unpriced


def test_redone_step_times_skip_compilation_lines():
    records = [
        {"step": 0, "loss": 1, "step_time_s": 5.0},
        {"step": 2, "loss": 1, "step_time_s": 0.1},
        {"step": 4, "loss": 1, "step_time_s": 0.3},
        {"step": 4, "eval_loss": 1},
        {"step": 5, "loss": 1, "step_time_s": 0.2},
    ]
    assert redone_step_times(records, 3, 6, first_steps={0}) == [0.3, 0.3, 0.2]
    # step 0 is a process's first (compile) line: it takes the median of the other intervals
    assert redone_step_times(records, 0, 2, first_steps={0}) == [0.2, 0.1]
    assert redone_step_times(records, 3, 3, first_steps={0}) == []


def test_format_duration():
    assert [format_duration(s) for s in (0, 4.2, 83, 3725, 90000)] == ["0s", "4s", "1m23s", "1h02m", "1d01h"]


def test_a_kind_without_a_peak_for_the_dtype_tracks_without_mfu(small_model, data_dir):
    cfg = load_experiment(
        None, [f"data.data_dir={data_dir}", *small_model, "hardware.kind=tpu-v4", "model.dtype=float32"]
    )
    arithmetic = run_arithmetic(cfg)  # Google publishes no float32 peak for TPU v4: training must not fail
    assert arithmetic.peak_flops_per_chip is None and arithmetic.peak_source.startswith("unknown")
    assert arithmetic.chips == jax.device_count() and arithmetic.price_per_chip_hour > 0
    fields = Tracker.postfix({"loss": 2.0, "tokens_per_sec": 1234.5, "mfu": None, "cost_usd": 0.5, "eta_s": 61})
    assert fields == {"loss": "2.000", "tok/s": "1,234", "cost": "$0.50", "ETA": "1m01s"}
