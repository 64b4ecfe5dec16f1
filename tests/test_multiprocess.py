"""Real multi-process training on localhost: 2 processes x 4 CPU devices against 1 process x 8.

`meshtrain train` runs as separate processes that find each other through JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, each feeding only its own rows of the global batch. With a
fixed number of data shards the global batch is the same on any process count, so:
  - 2 processes train with the losses of 1 process over the same 8 devices, skipping the same
    batches by number (train.skip_batches);
  - a checkpoint written by 2 processes resumes in 1, and one written by 1 resumes in 2, continuing
    with the losses of each other's runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # several training processes on localhost

TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The same layout, data=2 x fsdp=4, built two ways: across 2 processes the data axis is the DCN level
# of a hybrid mesh whose granules are processes (as hosts are on a GPU cluster); in 1 process it
# is all ICI.
MESH = {2: ["mesh.dcn_data=2", "mesh.ici_fsdp=-1"], 1: ["mesh.ici_data=2", "mesh.ici_fsdp=-1"]}


def _train(run_dir: Path, train_command: list[str], processes: int, steps: int, mesh: list[str] | None = None) -> None:
    """`python -m meshtrain.tools train` as `processes` processes sharing 8 CPU devices between them."""
    args = [
        *train_command,
        f"run_dir={run_dir}",
        *(MESH[processes] if mesh is None else mesh),
        "data.shards=2",
        # Batches skipped by number: the same global batches on either process count, and on resume.
        "train.skip_batches=[[1, 2], [3, 5]]",
        f"train.steps={steps}",
        "train.log_every=1",
        "train.eval_every=0",
        "checkpoint.every=2",
        "checkpoint.async_save=false",
    ]
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={8 // processes}",
    }
    port = _free_port()
    launched = []
    for rank in range(processes):
        if processes > 1:
            env = {
                **env,
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(processes),
                "JAX_PROCESS_ID": str(rank),
            }
        launched.append(
            subprocess.Popen(
                args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    outputs = [p.communicate(timeout=TIMEOUT_S)[0] for p in launched]
    for rank, (p, output) in enumerate(zip(launched, outputs)):
        assert p.returncode == 0, f"process {rank} of {processes} failed:\n{output[-4000:]}"
        if processes > 1:  # They really ran as one job, not as independent single processes.
            assert f"process {rank} of {processes}" in output, output[-4000:]


def _losses(run_dir: Path) -> dict[int, float]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def _assert_same_losses(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for step in expected:
        assert actual[step] == pytest.approx(expected[step], rel=1e-5), f"step {step}"


def test_two_processes_train_and_resume_like_one(train_command, tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    _train(two, train_command, processes=2, steps=2)
    _train(one, train_command, processes=1, steps=2)
    _assert_same_losses(_losses(two), _losses(one))

    # Each run's step-2 checkpoint resumes on the other process count.
    two_then_one, one_then_two = tmp_path / "two_then_one", tmp_path / "one_then_two"
    shutil.copytree(two, two_then_one)
    shutil.copytree(one, one_then_two)
    _train(two_then_one, train_command, processes=1, steps=4)
    _train(one_then_two, train_command, processes=2, steps=4)
    _assert_same_losses(_losses(two_then_one), _losses(one_then_two))
    assert sorted(_losses(two_then_one)) == [0, 1, 2, 3]


def test_processes_holding_the_same_rows_load_the_same_rows(train_command, tmp_path):
    """sequence=8 spans both processes, and no batch axis is split: every device holds every row,
    so both processes are one feeder and load the whole batch (as PaLM's 3 hosts of one 12-chip
    tensor group do). The losses are those of one process on the same layout."""
    mesh = ["mesh.ici_fsdp=1", "mesh.ici_sequence=8"]
    _train(tmp_path / "two", train_command, processes=2, steps=3, mesh=mesh)
    _train(tmp_path / "one", train_command, processes=1, steps=3, mesh=mesh)
    _assert_same_losses(_losses(tmp_path / "two"), _losses(tmp_path / "one"))
