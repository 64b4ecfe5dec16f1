"""A dead or stopped peer ends a 2-process run (2 x 4 CPU devices on localhost) within seconds, with
one line from meshtrain, a non-zero exit and no core dump; the survivor writes its report."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time

import pytest

pytestmark = pytest.mark.slow  # two training processes per case

HEARTBEAT_S = 5
WITHIN_S = 30  # the bound from the fault to the survivor's exit, on localhost


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir, train_command):
    args = [
        *train_command,
        f"run_dir={run_dir}",
        "mesh.dcn_data=2",
        "mesh.ici_fsdp=-1",
        "data.shards=2",
        "train.steps=100000",
        "train.log_every=1",
        "train.eval_every=0",
        "checkpoint.every=5",
        f"distributed.heartbeat_timeout_s={HEARTBEAT_S}",
    ]
    port = _free_port()
    processes = []
    for rank in range(2):
        env = {
            **os.environ,
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(rank),
        }
        processes.append(
            subprocess.Popen(
                args, cwd=run_dir.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 4):
        assert all(p.poll() is None for p in processes), [p.communicate() for p in processes]
        time.sleep(0.2)
    return processes


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_a_lost_peer_ends_the_survivor_in_seconds_with_one_line_and_its_report(fault, train_command, tmp_path):
    run_dir = tmp_path / "run"
    survivor, victim = _launch(run_dir, train_command)
    victim.send_signal(fault)
    faulted = time.monotonic()
    try:
        _, stderr = survivor.communicate(timeout=120)
    finally:
        victim.kill()
        victim.communicate()
    took = time.monotonic() - faulted
    assert survivor.returncode == 4, stderr[-3000:]
    assert took < WITHIN_S, f"the survivor took {took:.0f} s"
    (line,) = [line for line in stderr.splitlines() if line.startswith("meshtrain: error:")]
    assert "Traceback" not in stderr and "Check failure" not in stderr
    if "a peer died or hung" in line:  # a killed peer may fail the collective before its heartbeat is missed
        assert fault == signal.SIGKILL and "process 0: a step failed across processes" in line
    else:
        assert "process 1 stopped responding at step" in line and f"heartbeat_timeout_s={HEARTBEAT_S}" in line
        assert (run_dir / "stacks" / "process-0.txt").read_text().count("File ") > 3  # Python stacks, dumped
    report = json.loads((run_dir / "report.json").read_text())
    assert report["status"] == "failed" and report["steps"] >= 4
    assert not list(run_dir.parent.glob("core*"))


def test_a_lost_coordinator_ends_the_other_process_at_once_without_a_core_dump(train_command, tmp_path):
    run_dir = tmp_path / "run"
    coordinator, other = _launch(run_dir, train_command)
    coordinator.kill()
    faulted = time.monotonic()
    _, stderr = other.communicate(timeout=120)
    coordinator.communicate()
    assert other.returncode != 0 and time.monotonic() - faulted < WITHIN_S
    assert not list(run_dir.parent.glob("core*")) and not list(run_dir.glob("core*"))
    if other.returncode == 4:  # its collective failed first: meshtrain's own line
        assert "meshtrain: error: process 1: a step failed across processes" in stderr, stderr[-3000:]
    else:  # jax's error poller aborted it first: a note and the Python stacks, no core file
        abort = run_dir / "stacks" / "process-1-abort.txt"
        assert abort.is_file(), f"exit {other.returncode}, no abort note:\n{stderr[-3000:]}"
        note = abort.read_text()
        assert "the coordinator (process 0) or a peer was lost" in note
