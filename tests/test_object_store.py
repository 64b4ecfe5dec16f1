"""Runs on object storage: run_dir, data_dir and convert's SRC and DST on gs://, served by a real GCS
emulator (fake-gcs-server) on 127.0.0.1 that the tests start and stop themselves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.data import open_split, prepare_dataset
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.storage.append_log import AppendLog, log_parts, read_log
from meshtrain.trainer.storage.paths import as_path
from meshtrain.trainer.storage.transfer import copy_tree


def _no_local_url_folders(*roots):
    """pathlib folds gs://b/x into gs:/b/x: such a folder is a run that went to local disk instead."""
    for root in roots:
        for directory, names, _ in os.walk(root):
            assert not [n for n in names if n.endswith(":")], f"a local URL-shaped folder under {directory}"


def test_an_append_log_on_an_object_store_reads_back_as_one_file_across_writers(gcs):
    path = "gs://bucket/logs/metrics.jsonl"
    first = AppendLog(path, part_bytes=40)
    for i in range(5):
        first.write(f'{{"step": {i}}}\n')
        first.flush()
    first.close()
    second = AppendLog(path, part_bytes=40)  # a resumed run: never rewrites the parts it finds
    second.write('{"step": 5}\n')
    second.close()
    assert [json.loads(line)["step"] for line in read_log(path).splitlines()] == list(range(6))
    parts = [p.name for p in log_parts(path)]
    assert parts[0] == "metrics.jsonl" and len(parts) >= 3
    assert parts == sorted(parts, key=lambda name: (len(name), name))


def test_a_url_scheme_without_its_backend_or_unknown_is_one_line_naming_the_fix():
    with pytest.raises(UserError, match=r"unknown://|not unknown://"):
        as_path("unknown://bucket/x", "run_dir")
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(
            UserError, match=r'run_dir=s3://b/x: s3:// paths need the s3fs package: pip install -e "\.\[s3\]"'
        ):
            as_path("s3://b/x", "run_dir")


def test_a_dataset_prepared_for_an_object_store_is_uploaded_and_staged_by_the_next_host(gcs, tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(12):
        (corpus / f"doc{i}.txt").write_text(f"document {i} " * (i + 3))
    settings = ["data.dataset=local_text", f"data.text_dir={corpus}", "data.data_dir=gs://bucket/text"]
    here = load_experiment(None, [*settings, f"data.stage_dir={tmp_path / 'host-a'}"]).data
    prepare_dataset(here)
    assert list(as_path("gs://bucket/text").glob("local_text/*/*/dataset_info.json"))
    other_host = load_experiment(None, [*settings, f"data.stage_dir={tmp_path / 'host-b'}"]).data
    a, b = open_split(here, "train"), open_split(other_host, "train")
    assert len(a) == len(b) > 0 and [a[i] for i in range(len(a))] == [b[i] for i in range(len(b))]
    assert list((tmp_path / "host-b").rglob("*.array_record*")), "the second host read its own staged copy"
    _no_local_url_folders(tmp_path, os.getcwd())


STEPS = 100  # checkpoints every 20; killed after 40 logged steps


@pytest.fixture(scope="module")
def killed_and_whole(gcs, data_dir, small_model, tmp_path_factory):
    """A run on gs:// killed with SIGKILL mid-run and resumed, and the same run uninterrupted on
    local disk (reading the same gs:// data_dir through another staged copy)."""
    work = tmp_path_factory.mktemp("object-store-runs")
    copy_tree(data_dir, "gs://bucket/data")
    common = [
        sys.executable, "-m", "meshtrain.tools", "train", "--no-progress", *small_model,
        "data.data_dir=gs://bucket/data", f"train.steps={STEPS}", "train.log_every=1", "train.eval_every=50",
        "checkpoint.every=20",
    ]  # fmt: skip
    killed = [*common, "run_dir=gs://bucket/runs/killed", f"data.stage_dir={work / 'staged-a'}"]
    process = subprocess.Popen(killed, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    metrics = "gs://bucket/runs/killed/metrics.jsonl"
    while time.time() < deadline and process.poll() is None and len(read_log(metrics).splitlines()) < 40:
        time.sleep(0.2)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()[-2000:]}"
    process.kill()
    process.wait()
    resumed = subprocess.run(killed, cwd=work, capture_output=True, text=True, timeout=300)
    whole = subprocess.run(
        [*common, f"run_dir={work / 'whole'}", f"data.stage_dir={work / 'staged-b'}"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return work, resumed, whole


def test_a_run_on_gcs_killed_and_resumed_equals_an_uninterrupted_one_bitwise(
    killed_and_whole, gcs, final_state, assert_trees_equal
):
    work, resumed, whole = killed_and_whole
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert whole.returncode == 0, whole.stderr[-3000:]
    resumed_from = int(re.search(rf"steps (\d+)->{STEPS}", resumed.stdout).group(1))
    assert resumed_from > 0 and resumed_from % 20 == 0

    def losses(run_dir):
        records = map(json.loads, read_log(f"{run_dir}/metrics.jsonl").splitlines())
        return {r["step"]: r["loss"] for r in records if "loss" in r}

    assert losses("gs://bucket/runs/killed") == losses(work / "whole")
    killed = load_experiment("gs://bucket/runs/killed/config.yaml")
    step_a, state_a, data_a = final_state(killed)
    step_b, state_b, data_b = final_state(load_experiment(str(work / "whole" / "config.yaml")))
    assert step_a == step_b == STEPS and data_a == data_b
    assert_trees_equal(state_a, state_b)

    run = as_path("gs://bucket/runs/killed")
    for name in ("config.yaml", "goodput.json", "report.json", "report.md", "plots/loss.png"):
        assert (run / name).is_file(), name
    assert json.loads((run / "report.json").read_text())["status"] == "finished"
    assert list((run / "tensorboard").glob("*tfevents*")), "TensorBoard events on the bucket"
    _no_local_url_folders(work, os.getcwd())


def test_convert_reads_and_writes_meshtrain_checkpoints_on_gcs(killed_and_whole, gcs):
    work, _, _ = killed_and_whole
    done = subprocess.run(
        [sys.executable, "-m", "meshtrain.tools", "convert", "gs://bucket/runs/killed", "gs://bucket/bf16",
         "--to", "meshtrain", "--dtype", "bfloat16", "--verify", "--no-progress"],
        cwd=work, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    converted = as_path("gs://bucket/bf16")
    assert (converted / "config.yaml").is_file() and (converted / "checkpoints" / str(STEPS)).is_dir()
    assert "bfloat16" in (converted / "config.yaml").read_text()
    _no_local_url_folders(work, os.getcwd())
