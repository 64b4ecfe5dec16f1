"""Starts that cannot work end in one line and a non-zero exit, leave nothing behind that would block
the corrected command, and never run code from a config file."""

from __future__ import annotations

import pytest

from meshtrain.tools.cli import main as meshtrain
from meshtrain.trainer.config import dump_config, load_experiment
from meshtrain.trainer.errors import ConfigError


@pytest.fixture(scope="module")
def small(small_model):
    """The small model's overrides for an in-process `meshtrain train`, without eval."""
    return [*small_model, "train.eval_every=0", "--no-progress"]


def one_line_error(capsys, *argv) -> str:
    """Runs `meshtrain ARGV` in this process; asserts exit code 2 and a single error line, no traceback."""
    assert meshtrain(list(argv)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("meshtrain: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_a_run_dir_that_is_a_file_is_refused_and_left_alone(capsys, small, data_dir, tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    line = one_line_error(capsys, "train", f"run_dir={path}", f"data.data_dir={data_dir}", *small)
    assert f"run_dir={path} is an existing file" in line
    assert path.read_text() == "mine"


def test_a_run_dir_on_a_read_only_filesystem_is_one_line(capsys, small, data_dir, tmpfs):
    read_only_dir = tmpfs("ro,size=1m")
    line = one_line_error(capsys, "train", f"run_dir={read_only_dir / 'run'}", f"data.data_dir={data_dir}", *small)
    assert "not writable" in line and str(read_only_dir) in line


def test_a_model_that_cannot_fit_is_refused_before_anything_is_written(capsys, data_dir, tmp_path):
    run_dir = tmp_path / "huge"  # the default model 100000 layers deep: ~400 GiB of state
    line = one_line_error(capsys, "train", f"run_dir={run_dir}", f"data.data_dir={data_dir}", "model.num_layers=100000")
    assert "per device" in line and "parameters" in line and "meshtrain cost" in line
    assert not run_dir.exists()


def test_a_failed_start_does_not_block_the_corrected_command(capsys, small, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    args = ["train", f"run_dir={run_dir}", f"data.data_dir={data_dir}", *small, "train.steps=2"]
    # What a start that died after writing its config (in its first compile, say) leaves behind:
    # the config of another model, and no checkpoint.
    run_dir.mkdir()
    dump_config(load_experiment(None, [f"data.data_dir={data_dir}", "model.d_model=64"]), run_dir / "config.yaml")
    assert meshtrain(args) == 0, capsys.readouterr().err
    assert "d_model: 32" in (run_dir / "config.yaml").read_text()
    # Once the run has a checkpoint, another model is refused.
    line = one_line_error(capsys, *args, "model.d_model=64")
    assert "holds a different run" in line


def test_sample_refuses_more_tokens_than_the_model_has_positions(capsys, small, data_dir, tmp_path):
    run_dir = tmp_path / "run"
    assert meshtrain(["train", f"run_dir={run_dir}", f"data.data_dir={data_dir}", *small, "train.steps=1"]) == 0
    capsys.readouterr()
    line = one_line_error(capsys, "sample", str(run_dir), "--prompt", "def", "--max-new-tokens", "1000000000")
    assert "1000000000" in line and "model.max_seq_len=2048" in line


def test_a_validation_split_smaller_than_eval_needs_is_evaluated_whole(capsys, small, tmp_path):
    text = tmp_path / "text"
    text.mkdir()
    for i in range(40):
        (text / f"{i:02d}.txt").write_text(f"document {i}: " + "the cat sat on the mat. " * 10)
    run_dir = tmp_path / "run"
    args = [
        "train",
        f"run_dir={run_dir}",
        "data.dataset=local_text",
        f"data.text_dir={text}",
        f"data.data_dir={tmp_path / 'datasets'}",
        "data.eval_fraction=0.08",  # about 3 of the 40 documents
        *[a for a in small if a != "train.eval_every=0"],
        "train.steps=4",
        "train.eval_every=2",
        "train.eval_batches=50",
        "checkpoint.every=2",
    ]
    assert meshtrain(args) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "fewer than train.eval_batches=50" in out and "eval loss" in out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4"]


PROBE = "import meshtrain_gin_probe\n"


@pytest.mark.parametrize(
    "text, refused",
    [
        (PROBE + "TrainConfig.steps = 3\n", "may not import"),
        ("from meshtrain_gin_probe import anything\n", "may not import"),
        ("include '/etc/hostname'\n", "includes must name a file"),
        ("X = @print()\nTrainConfig.steps = %X\n", "literal values only"),
        ("TrainConfig.steps = @print\n", "literal values only"),
    ],
)
def test_gin_files_cannot_run_code(tmp_path, text, refused, monkeypatch):
    """A module whose import would leave a mark: refusing the file must leave none."""
    marker = tmp_path / "imported"
    (tmp_path / "meshtrain_gin_probe.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    path = tmp_path / "experiment.gin"
    path.write_text(text)
    with pytest.raises(ConfigError, match=refused):
        load_experiment(None, [], gin_files=[str(path)])
    assert not marker.exists()


def test_gin_includes_next_to_the_file_are_expanded_in_place(tmp_path):
    (tmp_path / "common.gin").write_text("TrainConfig.steps = 7\nTrainConfig.batch_size = 8\n")
    (tmp_path / "experiment.gin").write_text("include 'common.gin'\nTrainConfig.steps = 9\n")
    cfg = load_experiment(None, [], gin_files=[str(tmp_path / "experiment.gin")])
    assert (cfg.train.steps, cfg.train.batch_size) == (9, 8)  # the later binding wins, as in gin
    with pytest.raises(ConfigError, match="only bindings"):
        load_experiment(None, [], gin_params=["import os"])
