"""Real multi-process training on localhost: 1 process x 8 CPU devices, 2 x 4 and 4 x 2.

`meshtrain train` runs as separate processes that find each other through JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES and JAX_PROCESS_ID, each feeding only its own rows of the global batch. With the
default number of data shards (data.shards=0: the gcd of the batch sizes) the global batch is the
same on any process count that splits it, so:
  - 1, 2 and 4 processes train on identical global batches: rebuilt from each run's data ledger
    (`meshtrain data show`'s reader) they are equal token for token, and the losses are equal,
    skipping the same batches by number (train.skip_batches);
  - on 4 processes a sequence axis spans pairs of them: the two processes of a pair hold the same
    rows, so they are one feeder that loads those rows (as PaLM's 6 hosts of one 12-chip tensor
    group are), and only its first process writes the feeder's ledger;
  - a checkpoint written by 2 processes resumes in 1, and one written by 1 resumes in 4, continuing
    with the losses of each other's runs.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest

from meshtrain.trainer.run.provenance import step_batches

pytestmark = pytest.mark.slow  # several training processes on localhost

TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# data=2 x fsdp=4 on 1 and 2 processes: across 2 the data axis is the DCN level of a hybrid mesh
# whose granules are processes (as hosts are on a GPU cluster); in 1 process it is all ICI. On 4,
# data=2 x sequence=2 over DCN and fsdp=2 inside each process: rows split 4 ways, by process pairs.
MESH = {
    1: ["mesh.ici_data=2", "mesh.ici_fsdp=-1"],
    2: ["mesh.dcn_data=2", "mesh.ici_fsdp=-1"],
    4: ["mesh.dcn_data=2", "mesh.dcn_sequence=2", "mesh.ici_fsdp=-1"],
}
FEEDERS = {1: 1, 2: 2, 4: 2}


def _train(run_dir: Path, train_command: list[str], processes: int, steps: int) -> None:
    """`python -m meshtrain.tools train` as `processes` processes sharing 8 CPU devices between them."""
    args = [
        *train_command,
        f"run_dir={run_dir}",
        *MESH[processes],
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


def _global_batches(run_dir: Path, steps: range) -> list[dict[str, np.ndarray]]:
    """Each step's global batch as the run's data ledger rebuilds it, with the batch number."""
    return [{**b.arrays, "batch": np.int64(b.batch)} for b in step_batches(run_dir, steps)]


def test_one_two_and_four_processes_train_on_the_same_batches_and_resume(train_command, tmp_path):
    runs = {n: tmp_path / f"{n}_processes" for n in (1, 2, 4)}
    for processes, run_dir in runs.items():
        _train(run_dir, train_command, processes=processes, steps=2)
    one = _global_batches(runs[1], range(2))
    assert [int(b["batch"]) for b in one] == [0, 2]  # batch 1 skipped by number
    for processes in (2, 4):
        # Each feeder's first process recorded its rows' ledger; together the files rebuild the batch.
        assert len(list((runs[processes] / "data_ledger").iterdir())) == FEEDERS[processes]
        for step, (a, b) in enumerate(zip(_global_batches(runs[processes], range(2)), one)):
            assert a.keys() == b.keys()
            for feature in a:
                np.testing.assert_array_equal(a[feature], b[feature], err_msg=f"{processes} processes, step {step}")
        _assert_same_losses(_losses(runs[processes]), _losses(runs[1]))

    # A step-2 checkpoint resumes on another process count: 2 -> 1 and 1 -> 4.
    two_then_one, one_then_four = tmp_path / "two_then_one", tmp_path / "one_then_four"
    shutil.copytree(runs[2], two_then_one)
    shutil.copytree(runs[1], one_then_four)
    _train(two_then_one, train_command, processes=1, steps=4)
    _train(one_then_four, train_command, processes=4, steps=4)
    _assert_same_losses(_losses(two_then_one), _losses(one_then_four))
    assert sorted(_losses(two_then_one)) == [0, 1, 2, 3]
