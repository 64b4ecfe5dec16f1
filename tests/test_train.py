"""The training loop end to end on the embedded corpus: resume, accumulation, ramps, run directories."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.planning.peaks import GPU_MEMORY_FRACTION, GPU_MEMORY_FRACTION_ENV, GPU_MEMORY_FRACTION_ENVS
from meshtrain.trainer.run.memory_check import pool_gpu_memory
from meshtrain.trainer.run.train import train


@pytest.fixture
def experiment(small_experiment):
    """(run_dir, *overrides) -> the small experiment in run_dir, without evaluation."""
    return lambda run_dir, *overrides: small_experiment(f"run_dir={run_dir}", "train.eval_every=0", *overrides)


def logged(run_dir, key="loss"):
    """{step: value} from metrics.jsonl (a resumed run's later lines win, as a reader would take them)."""
    values = {}
    for line in open(run_dir / "metrics.jsonl"):
        record = json.loads(line)
        if key in record:
            values[record["step"]] = record[key]
    return values


def test_resumed_run_equals_uninterrupted_run_bitwise(assert_trees_equal, final_state, experiment, data_dir, tmp_path):
    common = ["train.log_every=1", "checkpoint.every=3", "optimizer.decay_steps=6", "optimizer.warmup_steps=2"]
    whole = experiment(tmp_path / "whole", "train.steps=6", *common)
    train(whole, progress=False)
    half = experiment(tmp_path / "halves", "train.steps=3", *common)
    first = train(half, progress=False)
    assert first.end_step == 3
    resumed = train(experiment(tmp_path / "halves", "train.steps=6", *common), progress=False)
    assert (resumed.start_step, resumed.end_step) == (3, 6)

    assert logged(tmp_path / "whole") == logged(tmp_path / "halves")
    assert len(logged(tmp_path / "whole")) == 6
    step_a, state_a, data_a = final_state(whole)
    step_b, state_b, data_b = final_state(half)
    assert step_a == step_b == 6
    assert data_a == data_b
    assert_trees_equal(state_a, state_b)


def test_gradient_accumulation_matches_one_big_batch(final_state, experiment, data_dir, tmp_path):
    one = experiment(tmp_path / "one", "train.steps=2", "train.log_every=1", "train.batch_size=16")
    two = experiment(
        tmp_path / "two", "train.steps=2", "train.log_every=1", "train.batch_size=16", "train.microbatches=2"
    )
    train(one, progress=False)
    train(two, progress=False)
    losses_one, losses_two = logged(tmp_path / "one"), logged(tmp_path / "two")
    for step in losses_one:
        assert losses_two[step] == pytest.approx(losses_one[step], rel=1e-5)
    _, state_one, _ = final_state(one)
    _, state_two, _ = final_state(two)
    for x, y in zip(jax.tree.leaves(state_one["params"]), jax.tree.leaves(state_two["params"])):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-6)


def test_batch_ramp_changes_the_batch_at_the_given_steps(experiment, data_dir, tmp_path, monkeypatch):
    for name in GPU_MEMORY_FRACTION_ENVS:
        monkeypatch.delenv(name, raising=False)
    cfg = experiment(
        tmp_path / "ramp",
        "train.steps=5",
        "train.log_every=1",
        "train.batch_ramp=[[2, 16], [4, 24]]",
        "checkpoint.every=100",
    )
    train(cfg, progress=False)
    assert logged(tmp_path / "ramp", "batch_size") == {0: 8, 1: 8, 2: 16, 3: 16, 4: 24}
    # On a GPU, JAX would pool the share of memory `meshtrain cost` and `plan` fit runs into; a
    # fraction the environment already sets, under either name, is kept (jaxlib refuses both at once).
    assert float(os.environ[GPU_MEMORY_FRACTION_ENV]) == GPU_MEMORY_FRACTION
    for name in GPU_MEMORY_FRACTION_ENVS:
        environ = {name: "0.5"}
        pool_gpu_memory(environ)
        assert environ == {name: "0.5"}


def test_microbatch_size_accumulates_only_where_the_ramp_needs_it(experiment, tmp_path):
    """microbatch_size=8 over a ramp 8 -> 16: one microbatch, then two; the same losses as the ramp
    without accumulation (to summation order), and the same batches."""
    common = ["train.steps=4", "train.log_every=1", "train.batch_ramp=[[2, 16]]", "checkpoint.every=100"]
    train(experiment(tmp_path / "whole", *common), progress=False)
    train(experiment(tmp_path / "micro", *common, "train.microbatch_size=8"), progress=False)
    assert (
        logged(tmp_path / "micro", "batch_size")
        == logged(tmp_path / "whole", "batch_size")
        == {0: 8, 1: 8, 2: 16, 3: 16}
    )
    whole, micro = logged(tmp_path / "whole"), logged(tmp_path / "micro")
    assert micro[0] == whole[0] and micro[1] == whole[1]  # one microbatch: the very same program
    for step in (2, 3):
        assert micro[step] == pytest.approx(whole[step], rel=1e-5)


def test_run_directory_with_another_model_is_refused_and_left_alone(experiment, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    train(experiment(run_dir, "train.steps=1"), progress=False)
    before = (run_dir / "config.yaml").read_text()
    with pytest.raises(ConfigError, match=r"model\.num_layers.*2.*3"):
        train(experiment(run_dir, "train.steps=2", "model.num_layers=3"), progress=False)
    assert (run_dir / "config.yaml").read_text() == before


def test_run_directory_records_config_metrics_events_and_checkpoints(final_state, experiment, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    cfg = experiment(run_dir, "train.steps=4", "train.log_every=2", "train.eval_every=2", "train.eval_batches=1")
    summary = train(cfg, progress=False)
    # The record is the config, with the schedule's decay length pinned (4 steps, past the warmup's 20).
    pinned = dataclasses.replace(cfg.optimizer, decay_steps=cfg.optimizer.warmup_steps + 1)
    assert load_experiment(str(run_dir / "config.yaml")) == dataclasses.replace(cfg, optimizer=pinned)
    records = [json.loads(line) for line in open(run_dir / "metrics.jsonl")]
    train_records = [r for r in records if "loss" in r]
    assert [r["step"] for r in train_records] == [0, 2, 3]
    for record in train_records:
        assert {"step", "loss", "tokens_per_sec", "step_time_s", "learning_rate"} <= set(record)
        assert record["tokens_per_sec"] > 0 and np.isfinite(record["loss"])
    assert [r["step"] for r in records if "eval_loss" in r] == [1, 3]
    assert summary.last_eval_loss == pytest.approx(records[-1]["eval_loss"])
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert final_state(cfg)[0] == 4


def test_checkpoints_keep_the_last_n_and_every_kth(experiment, data_dir, tmp_path):
    cfg = experiment(
        tmp_path / "run",
        "train.steps=8",
        "checkpoint.every=1",
        "checkpoint.keep=2",
        "checkpoint.keep_every=4",
        "train.log_every=100",
    )
    train(cfg, progress=False)
    kept = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert kept == [4, 7, 8]


def test_an_already_trained_run_is_left_as_it_was(experiment, tmp_path):
    """Starting a finished run again (here with another mesh) trains nothing and rewrites nothing:
    its config.yaml still describes the run that made its checkpoints."""
    run_dir = tmp_path / "done"
    train(experiment(run_dir, "train.steps=2"), progress=False)
    before = (run_dir / "config.yaml").read_bytes()
    again = train(experiment(run_dir, "train.steps=2", "mesh.ici_data=-1", "mesh.ici_fsdp=2"), progress=False)
    assert (again.start_step, again.end_step) == (2, 2)
    assert (run_dir / "config.yaml").read_bytes() == before


def test_raising_train_steps_extends_the_run_at_the_final_learning_rate(experiment, tmp_path, capsys):
    """The decay length is fixed when a run starts: extending it never raises the learning rate."""
    common = ["train.log_every=1", "optimizer.warmup_steps=2", "checkpoint.every=100"]
    cfg = experiment(tmp_path / "run", "train.steps=6", *common)
    train(cfg, progress=False)
    assert "decay_steps: 6\n" in (tmp_path / "run" / "config.yaml").read_text()
    train(experiment(tmp_path / "run", "train.steps=10", *common), progress=False)
    assert "goes past the schedule's decay (optimizer.decay_steps=6" in capsys.readouterr().out
    rates = logged(tmp_path / "run", "learning_rate")
    assert sorted(rates) == list(range(10))
    after_warmup = [rates[s] for s in range(2, 10)]
    assert after_warmup == sorted(after_warmup, reverse=True), f"the learning rate rose: {rates}"
    assert rates[9] == pytest.approx(cfg.optimizer.learning_rate * cfg.optimizer.min_lr_ratio)


def test_a_profile_of_the_chosen_steps_is_written_and_linked_from_the_report(experiment, tmp_path):
    run_dir = tmp_path / "run"
    train(experiment(run_dir, "train.steps=5", "train.profile_start=2", "train.profile_steps=2"), progress=False)
    traces = list((run_dir / "profile" / "plugins" / "profile").glob("*/*.xplane.pb"))
    assert traces, "no TensorBoard profile"
    assert list((run_dir / "profile" / "plugins" / "profile").glob("*/*.trace.json.gz")), "no Perfetto trace"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["profiles"] == [f"profile/plugins/profile/{traces[0].parent.name}"]
    assert "## Profile" in (run_dir / "report.md").read_text()


def test_a_second_run_of_the_same_shape_reads_its_executables_from_the_compilation_cache(experiment, tmp_path):
    """The suite's cache (conftest.py, through JAX_COMPILATION_CACHE_DIR, which wins over
    train.compilation_cache) already holds the small model's step once the first run is done."""
    for name in ("first", "second"):
        train(experiment(tmp_path / name, "train.steps=2"), progress=False)
    segment = json.loads((tmp_path / "second" / "goodput.json").read_text())["segments"][-1]
    assert segment["compile_cache_hits"] >= 1 and segment["compile_time_saved_s"] > 0
    assert "The compilation cache saved" in (tmp_path / "second" / "report.md").read_text()


def _wandb_records(path):
    """The records of a .wandb file: W&B's 7-byte header, then LevelDB's log format (32 KiB blocks
    of [crc32c 4][length 2][type 1][data] chunks, a record split over FIRST/MIDDLE/LAST chunks)."""
    from wandb.proto import wandb_internal_pb2

    data, records, pending, block = path.read_bytes(), [], b"", 32768
    position = 7
    while position + 7 <= len(data):
        if block - position % block < 7:  # a block's tail too short for a header is padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        chunk, position = data[position + 7 : position + 7 + length], position + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk  # FULL or FIRST start a record
        if kind in (1, 4):  # FULL or LAST end it
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def test_weights_and_biases_gets_the_metrics_config_and_report_offline(experiment, tmp_path, monkeypatch):
    pytest.importorskip("wandb")  # in the test extra; an optional extra for users
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    cfg = experiment(run_dir, "train.steps=4", "train.log_every=1", "tracking.wandb=true")
    train(cfg, progress=False)
    (offline,) = (run_dir / "wandb").glob("offline-run-*")
    records = _wandb_records(next(offline.glob("run-*.wandb")))
    history = {}
    for r in records:
        if r.WhichOneof("record_type") == "history":
            items = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            if "loss" in items:
                history[items["_step"]] = items
    assert {step: h["loss"] for step, h in history.items()} == pytest.approx(logged(run_dir))
    config = next(r.run.config for r in records if r.WhichOneof("record_type") == "run")
    values = {i.key: json.loads(i.value_json) for i in config.update}
    assert values["train"]["steps"] == 4 and values["model"]["d_model"] == cfg.model.d_model
    assert (offline / "files" / "report.md").read_text() == (run_dir / "report.md").read_text()
