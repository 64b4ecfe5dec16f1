"""`meshtrain data show`: the batch it rebuilds for a step is the batch that step trained on.

What the train step consumed is recorded by wrapping the one function every batch passes through
on its way to the device (trainer/run/train.py's global_batch) in this test; the run is the small
model on the default two-source mixture, with a schedule change, skipped batches and a resume.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from meshtrain.tools import data as data_tool
from meshtrain.trainer.data import FEATURES
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run import train as train_module
from meshtrain.trainer.run.provenance import step_batches
from meshtrain.trainer.run.train import train

RUN = [
    "train.eval_every=0",
    "train.log_every=4",
    "checkpoint.every=5",
    "checkpoint.async_save=false",
    "data.mixture_schedule=[[6, [0.2, 0.8]]]",
    "train.skip_batches=[[8, 10]]",  # step 8 trains batch 10
]


@pytest.fixture(scope="module")
def trained(small_experiment, tmp_path_factory):
    """(run_dir, {step: the host batch the train step received}) over 16 steps in two runs."""
    run_dir = tmp_path_factory.mktemp("provenance") / "run"
    consumed = []
    real = train_module.global_batch

    def recording(plan, local_batch):
        consumed.append({k: np.array(v) for k, v in local_batch.items()})
        return real(plan, local_batch)

    patch = pytest.MonkeyPatch()
    patch.setattr(train_module, "global_batch", recording)
    try:
        train(small_experiment(f"run_dir={run_dir}", "train.steps=10", *RUN), progress=False)
        train(small_experiment(f"run_dir={run_dir}", "train.steps=16", *RUN), progress=False)  # resumes at 10
    finally:
        patch.undo()
    assert len(consumed) == 16
    return run_dir, dict(enumerate(consumed))


@pytest.mark.parametrize("step", [0, 3, 7, 8, 13, 15])
def test_rebuilt_batch_is_the_batch_the_step_trained_on(trained, step):
    """0 and 8 logged, 3 replayed from 0, 7 across the schedule change at 6, 8 after the skip,
    13 and 15 after the resume at 10."""
    run_dir, consumed = trained
    (rebuilt,) = step_batches(run_dir, range(step, step + 1))
    assert rebuilt.step == step and rebuilt.batch == (step + 2 if step >= 8 else step)
    for key in FEATURES:
        np.testing.assert_array_equal(rebuilt.arrays[key], consumed[step][key], err_msg=key)
    assert (rebuilt.skipped_before == (8, 10)) == (step == 8)


def test_rows_name_their_source_document_and_text(trained, small_experiment):
    run_dir, consumed = trained
    before, after = (next(step_batches(run_dir, range(s, s + 1))) for s in (2, 12))
    share = lambda batch: sum(row.source == "python_source" for row in batch.rows) / len(batch.rows)
    assert share(before) < 0.5 < share(after)  # 0.3 of the rows before the schedule's step 6, 0.8 after
    row = after.rows[0]
    assert row.segments and all(s.text for s in row.segments)
    docs = {s.document for r in after.rows for s in r.segments}
    assert all(d >= 0 for d in docs)


def test_a_range_and_a_few_rows(trained):
    run_dir, consumed = trained
    batches = list(step_batches(run_dir, range(5, 9), rows=3))
    assert [b.step for b in batches] == [5, 6, 7, 8]
    for batch in batches:
        assert len(batch.rows) == 3
        np.testing.assert_array_equal(batch.arrays["inputs"], consumed[batch.step]["inputs"][:3])


def test_the_command_prints_text_and_json(trained, capsys):
    run_dir, consumed = trained
    assert data_tool.main(["show", str(run_dir), "--step", "8", "--rows", "2"]) == 0
    text = capsys.readouterr().out
    assert "batches 8..9 were skipped" in text and "step 8: batch 10, 8 rows, first 2 rows shown" in text
    assert data_tool.main(["show", str(run_dir), "--step", "12:14", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["step"] for line in lines] == [12, 13]
    tokens = [t for row in lines[1]["rows"] for segment in row["segments"] for t in segment["tokens"][:-1]]
    real = consumed[13]["inputs"][consumed[13]["segment_ids"] > 0]
    assert tokens == real.tolist()


def test_bad_steps_are_one_line(trained, capsys):
    run_dir, _ = trained
    assert data_tool.main(["show", str(run_dir), "--step", "x"]) != 0
    assert "--step 'x'" in capsys.readouterr().err
    with pytest.raises(UserError, match="no config.yaml"):
        next(step_batches(run_dir / "nope", range(1)))
