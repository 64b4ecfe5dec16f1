"""The progress watchdog on its own, SIGTERM while a run starts, and time-based checkpoints."""

from __future__ import annotations

import signal
import subprocess
import threading
import time

from meshtrain.trainer.run.train import train
from meshtrain.trainer.run.watchdog import Watchdog


def test_a_process_that_stops_finishing_steps_dumps_its_stacks_and_exits_with_one_line(tmp_path, capsys):
    exited = threading.Event()
    codes = []
    reported = []

    def exit_(code):
        codes.append(code)
        exited.set()

    watchdog = Watchdog(tmp_path, limit_s=2, heartbeat_timeout_s=10, on_failure=lambda: reported.append(1), exit=exit_)
    watchdog.start()
    watchdog.beat(0)  # the first step is done; then nothing for longer than the 2 s limit
    assert exited.wait(timeout=20)
    watchdog.close()
    assert codes == [4] and reported == [1]
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("meshtrain: error: process 0 stopped making progress at step 1")
    assert "limit 2 s, train.watchdog_s" in line
    stacks = (tmp_path / "stacks" / "process-0.txt").read_text()
    assert "test_a_process_that_stops_finishing_steps" in stacks  # the main thread's Python stack


def test_side_work_gets_its_own_allowance(tmp_path):
    codes = []
    watchdog = Watchdog(tmp_path, limit_s=1, heartbeat_timeout_s=10, exit=codes.append).start()
    watchdog.beat(0)
    with watchdog.allowance("checkpointing", seconds=30):
        time.sleep(3)  # longer than the 1 s step limit, well inside the allowance
    watchdog.beat(1)
    watchdog.close()
    assert codes == [] and watchdog.fired is None


def test_sigterm_while_a_run_starts_ends_it_at_once_and_the_same_command_then_trains(train_command, tmp_path):
    args = [*train_command, "train.steps=3", "train.eval_every=0"]
    process = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    config = tmp_path / "runs" / "default" / "config.yaml"
    deadline = time.time() + 120
    while time.time() < deadline and not config.exists():  # written just before the first compile
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert time.monotonic() - signalled < 10
    # Caught in start-up (the usual case: the first compile follows config.yaml), or at the first step.
    assert "stopped by SIGTERM during start-up" in stderr or "stopped by signal at step 1" in stdout, stderr
    assert "Traceback" not in stderr
    again = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr
    assert "->3, loss" in again.stdout


def test_checkpoints_are_also_written_by_the_clock(small_experiment, tmp_path):
    cfg = small_experiment(
        f"run_dir={tmp_path / 'run'}",
        "train.eval_every=0",
        "train.steps=60",
        "checkpoint.every=100000",  # never by step count: only the clock and the end
        "checkpoint.every_minutes=0.003",  # 0.18 s, a few steps of the small model
        "checkpoint.keep=100",
    )
    train(cfg, progress=False)
    steps = sorted(int(p.name) for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 60 and len(steps) >= 3, steps
