"""The command lines as a user runs them: exit codes, one-line errors, nothing written on bad input,
a clean checkpoint on SIGTERM, and the tokenizer command."""

from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # every test runs the command line in a subprocess


def meshtrain(*args, cwd, timeout=300):
    """Runs `python -m meshtrain.tools ARGS` (the console script's code) and returns the finished process."""
    env = dict(os.environ)
    return subprocess.run(
        [sys.executable, "-m", "meshtrain.tools", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


BAD_INPUTS = [
    (["train", "trian.steps=5"], "did you mean 'train.steps'"),
    (["train", "train.steps=abc"], "train.steps"),
    (["train", "train.steps=-1"], "train.steps"),
    (["train", "model=palm-9000b"], "palm-9000b"),
    (["train", "configs/experiment/nope.yaml"], "nope.yaml"),
    (["train", "model.num_kv_heads=3"], "num_kv_heads"),
    (["train", "--gin_param", "TrainConfig.stepz=3"], "stepz"),
    (["train", "data.dataset=c4/en:3.1.0"], "c4/en:3.1.0"),
    (["tokenizer", "data.dataset=local_text", "data.text_dir=/no/such/dir"], "/no/such/dir"),
    (["convert", "/no/such/model", "out"], "/no/such/model"),
    (["sample", "/no/such/run", "--prompt", "hi"], "/no/such/run"),
]


@pytest.mark.parametrize("args,fragment", BAD_INPUTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_input_is_one_line_exit_2_and_nothing_written(args, fragment, tmp_path):
    data_dir = tmp_path / "datasets"
    result = meshtrain(*args, f"data.data_dir={data_dir}", cwd=tmp_path, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("meshtrain: error:"), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_debug_flag_shows_the_traceback(tmp_path):
    result = meshtrain("train", "trian.steps=5", "--debug", cwd=tmp_path, timeout=120)
    assert result.returncode != 0 and "Traceback" in result.stderr and "ConfigError" in result.stderr


def test_sigterm_saves_a_checkpoint_and_the_same_command_resumes(small_model, data_dir, tmp_path):
    args = [
        "train",
        f"data.data_dir={data_dir}",
        *small_model,
        "train.steps=100000",
        "train.log_every=1",
        "train.eval_every=0",
        "checkpoint.every=100000",
        "--no-progress",
    ]
    env = dict(os.environ)
    process = subprocess.Popen(
        [sys.executable, "-m", "meshtrain.tools", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "runs" / "default" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert "interrupted" in stdout
    last_logged = json.loads(metrics.read_text().splitlines()[-1])["step"]
    checkpoints = sorted(int(p.name) for p in (tmp_path / "runs/default/checkpoints").iterdir() if p.name.isdigit())
    assert checkpoints == [last_logged + 1]

    resumed = meshtrain(*args[:-1], f"train.steps={last_logged + 3}", "--no-progress", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert f"steps {last_logged + 1}->{last_logged + 3}" in resumed.stdout


def test_tokenizer_command_trains_a_round_tripping_model(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(6):
        (corpus / f"doc{i}.txt").write_text(f"Document {i}: the quick brown fox\n\tjumps  over {i * 7} dogs.\n" * 20)
    output = tmp_path / "tok.model"
    result = meshtrain(
        "tokenizer",
        "data.dataset=local_text",
        f"data.text_dir={corpus}",
        f"data.data_dir={tmp_path / 'datasets'}",
        "model.vocab_size=300",
        f"--output={output}",
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert output.is_file() and "round trip exact" in result.stdout


def test_kill_9_resumes_from_the_last_complete_checkpoint_as_if_never_killed(
    assert_trees_equal, final_state, small_model, data_dir, tmp_path
):
    """A run killed without warning (mid-step, maybe mid-write) and restarted with the same command
    ends with the same parameters and per-step losses as a run that was never killed."""
    common = [
        "train",
        f"data.data_dir={data_dir}",
        *small_model,
        "train.steps=80",
        "train.log_every=1",
        "train.eval_every=0",
        "checkpoint.every=7",
        "--no-progress",
    ]
    env = dict(os.environ)
    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "meshtrain.tools", *common, f"run_dir={killed_dir}"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    metrics = killed_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 30):
        time.sleep(0.05)
    assert process.poll() is None, "the run finished before it could be killed"
    process.kill()
    process.wait()
    resumed = meshtrain(*common, f"run_dir={killed_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    resumed_from = int(re.search(r"steps (\d+)->80", resumed.stdout).group(1))
    assert resumed_from > 0 and resumed_from % 7 == 0
    whole = meshtrain(*common, f"run_dir={tmp_path / 'whole'}", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr

    def last_losses(run_dir):
        return {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())}

    assert last_losses(killed_dir) == last_losses(tmp_path / "whole")
    assert (killed_dir / "checkpoints" / "80").is_dir()
    from meshtrain.trainer.config import load_experiment

    _, killed_state, _ = final_state(load_experiment(str(killed_dir / "config.yaml")))
    _, whole_state, _ = final_state(load_experiment(str(tmp_path / "whole" / "config.yaml")))
    assert_trees_equal(killed_state, whole_state)


def test_libtpu_prints_nothing_on_a_machine_without_tpus_and_compile_still_finds_it(tmp_path):
    """libtpu starts with JAX on every machine (JAX_PLATFORMS unset, as a user runs it); without TPU
    chips it used to print five lines about missing TPU VM metadata at every command."""
    if any(open(v).read().strip() == "0x1ae0" for v in glob.glob("/sys/bus/pci/devices/*/vendor")):
        pytest.skip("this machine has TPU chips: libtpu is meant to start here")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_PLATFORMS", "TPU_WORKER_HOSTNAMES", "TPU_ACCELERATOR_TYPE")
    }
    done = subprocess.run(
        [sys.executable, "-m", "meshtrain.tools", "compile", "model.num_layers=1", "--topology", "v4:2x2x1"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "fits" in done.stdout
    assert done.stderr.strip() == "", done.stderr
