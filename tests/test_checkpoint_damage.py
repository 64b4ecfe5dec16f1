"""Damaged checkpoints: each kind is set aside, the step before it restored, and the run then ends
bitwise equal to a run that was never damaged. Also: the report of a finished run is rewritten when
it is missing, and a full disk stops the run with one line and a resumable directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.checkpoint import Checkpoints, CheckpointWriteError
from meshtrain.trainer.run.train import train

COMMON = [
    "train.eval_every=0",
    "train.log_every=1",
    "checkpoint.every=2",
    "checkpoint.keep=5",
    "optimizer.decay_steps=50",
    "optimizer.warmup_steps=2",
]


@pytest.fixture(scope="module")
def experiment(small_experiment):
    return lambda run_dir, *overrides: small_experiment(f"run_dir={run_dir}", *COMMON, *overrides)


@pytest.fixture(scope="module")
def runs(experiment, tmp_path_factory):
    """A run stopped at step 6 (checkpoints 2, 4, 6) and the same run trained straight to step 8."""
    root = tmp_path_factory.mktemp("damage")
    train(experiment(root / "at6", "train.steps=6"), progress=False)
    train(experiment(root / "whole", "train.steps=8"), progress=False)
    return root


def _data_files(directory: Path) -> list[Path]:
    """The array data files (OCDBT's d/ folders); every one, since which of them a restore reads
    depends on how the write was merged."""
    files = [p for p in directory.rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files
    return files


def _truncate(step: Path):
    for path in _data_files(step / "state"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _overwrite(step: Path):
    """Same size, different bytes: only the checksums can tell."""
    for path in _data_files(step / "state"):
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
        path.write_bytes(bytes(data))


def _remove_manifest(step: Path):
    for manifest in (step / "state").rglob("manifest.ocdbt"):
        manifest.unlink()


def _remove_metadata(step: Path):
    (step / "state" / "_METADATA").unlink()


def _garbage_metadata(step: Path):
    (step / "state" / "_METADATA").write_text("{not json at all")


def _empty_state(step: Path):
    shutil.rmtree(step / "state")
    (step / "state").mkdir()


def _garbage_data_state(step: Path):
    (step / "data" / "metadata").write_text("\x00\x01garbage")


DAMAGE = {
    "truncated data file": _truncate,
    "bytes overwritten in place": _overwrite,
    "missing manifest": _remove_manifest,
    "missing _METADATA": _remove_metadata,
    "garbage _METADATA": _garbage_metadata,
    "empty state/": _empty_state,
    "garbage data-iterator state": _garbage_data_state,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_continues_bitwise(
    damage, runs, experiment, final_state, assert_trees_equal, tmp_path, capsys
):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "at6", run_dir)
    DAMAGE[damage](run_dir / "checkpoints" / "6")
    cfg = experiment(run_dir, "train.steps=8")
    summary = train(cfg, progress=False)
    out = capsys.readouterr().out
    (aside,) = (run_dir / "checkpoints" / "corrupt").iterdir()
    assert aside.name.startswith("6-")
    assert "checkpoint of step 6 is corrupt" in out and str(aside) in out and "restoring step 4 instead" in out
    assert (summary.start_step, summary.end_step) == (4, 8)
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "4", "6", "8"]
    _, state, data = final_state(cfg)
    _, clean, clean_data = final_state(experiment(runs / "whole", "train.steps=8"))
    assert_trees_equal(state, clean)
    assert data == clean_data


def test_when_every_checkpoint_is_damaged_the_run_says_so_and_a_rerun_starts_afresh(runs, experiment, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "at6", run_dir)
    for step in ("2", "4", "6"):
        _garbage_metadata(run_dir / "checkpoints" / step)
    cfg = experiment(run_dir, "train.steps=8")
    with pytest.raises(UserError, match=r"no checkpoint .* could be read \(steps 2, 4, 6.*train from step 0"):
        train(cfg, progress=False)
    assert len(list((run_dir / "checkpoints" / "corrupt").iterdir())) == 3
    assert train(cfg, progress=False).start_step == 0


def test_a_finished_run_killed_before_its_report_gets_it_written_by_a_rerun(runs, experiment, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "whole", run_dir)
    before = json.loads((run_dir / "report.json").read_text())
    for name in ("report.json", "report.md"):
        (run_dir / name).unlink()
    config_before = (run_dir / "config.yaml").read_text()
    summary = train(experiment(run_dir, "train.steps=8"), progress=False)
    assert summary.report == str(run_dir / "report.md")
    after = json.loads((run_dir / "report.json").read_text())
    assert after["status"] == "finished" and after["steps"] == before["steps"] == 8
    assert after["final_loss"] == before["final_loss"] and after["wall_s"] == pytest.approx(before["wall_s"])
    assert (run_dir / "config.yaml").read_text() == config_before


def test_a_full_disk_stops_the_run_at_once_with_one_line_and_the_same_command_resumes(
    tmpfs, experiment, final_state, tmp_path
):
    small_disk = tmpfs("size=3m")
    # One checkpoint of the small model takes ~0.6 MiB; keep=10 fills the 3 MiB disk after a few.
    run_dir = small_disk / "run"
    cfg = experiment(run_dir, "train.steps=40", "checkpoint.every=1", "checkpoint.keep=10")
    with pytest.raises(CheckpointWriteError) as raised:
        train(cfg, progress=False)
    message = str(raised.value)
    assert "\n" not in message and str(run_dir / "checkpoints") in message
    assert "No space left on device" in message and "needs about" in message and "is free" in message
    failed_step = int(message.split("checkpoint of step ")[1].split()[0])
    written = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    assert written and written[-1] < failed_step  # and the newest one left restores:
    step, _, _ = final_state(cfg)
    assert step == written[-1]
    # Free the space (move the run off the small disk) and run the same command: it resumes.
    moved = tmp_path / "moved"
    shutil.copytree(run_dir, moved, ignore=shutil.ignore_patterns("*.orbax-checkpoint-tmp*"))
    summary = train(experiment(moved, "train.steps=40", "checkpoint.every=1", "checkpoint.keep=10"), progress=False)
    assert summary.start_step == written[-1] and summary.end_step == 40


def test_a_checkpoint_from_before_the_spike_guard_resumes_with_a_fresh_guard(runs, experiment, final_state, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(runs / "at6", run_dir)
    cfg = experiment(run_dir, "train.steps=8")
    _, state, data = final_state(cfg)
    shutil.rmtree(run_dir / "checkpoints")
    older = Checkpoints(run_dir / "checkpoints", cfg.checkpoint)  # what meshtrain wrote before the guard
    older.save(6, {k: v for k, v in state.items() if k != "guard"}, data)
    older.close()
    summary = train(cfg, progress=False)
    assert (summary.start_step, summary.end_step) == (6, 8)
    assert not (run_dir / "checkpoints" / "corrupt").exists()
