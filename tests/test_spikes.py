"""Loss spikes and non-finite steps: the guard inside the step, rewind-and-skip, and what is recorded.

The corpus is built so that a spike is real, not simulated: a few hundred documents of a 16-word
language (which the small model learns within ~30 steps), with one long document of random symbols
in the middle. Read in order (data.shuffle=false), the symbols fill the batches of about ten
consecutive steps, whose loss jumps from ~2.5 to ~12.
"""

from __future__ import annotations

import json
import math
import random

import jax
import numpy as np
import pytest

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.run.recovery import DivergedError, SkipList, rewind_target
from meshtrain.trainer.run.train import train
from meshtrain.trainer.step.guard import SpikeRule, init_guard, judge

STEPS = 80


@pytest.fixture(scope="module")
def spiky(tmp_path_factory, small_model):
    """(run_dir, *overrides) -> an experiment on the spiky corpus (prepared once for the module)."""
    root = tmp_path_factory.mktemp("spiky")
    text = root / "text"
    text.mkdir()
    rng = random.Random(0)
    words = "the cat sat on a mat and the dog ran to the red ball in the park".split()
    for prefix in ("a", "z"):  # files are read in name order: a*, then the symbols (m), then z*
        for i in range(120):
            (text / f"{prefix}{i:03d}.txt").write_text(" ".join(rng.choice(words) for _ in range(60)))
    (text / "m000.txt").write_text("".join(rng.choice("qwxzjkvbpy0123456789#$%&@!") for _ in range(3000)))
    base = [
        *small_model,
        "data.dataset=local_text",
        f"data.text_dir={text}",
        f"data.data_dir={root / 'datasets'}",
        "data.shuffle=false",
        "data.shards=1",  # one stream in file order: the symbols fill whole batches
        "train.log_every=1",
        "train.eval_every=0",
        "optimizer.decay_steps=100",  # the schedule does not depend on train.steps: runs of any length agree
        "spike.window=8",
        "spike.factor=3",
    ]
    return lambda run_dir, *overrides: load_experiment(None, [*base, f"run_dir={run_dir}", *overrides])


def records(run_dir):
    """metrics.jsonl parsed strictly: a bare NaN or Infinity token fails the test."""

    def refuse(token):
        raise AssertionError(f"metrics.jsonl holds a bare {token}")

    return [json.loads(line, parse_constant=refuse) for line in open(run_dir / "metrics.jsonl")]


def losses(run_dir):
    return {r["step"]: r for r in records(run_dir) if "loss" in r}


def test_a_spiking_batch_applies_no_update_and_equals_never_seeing_it(spiky, final_state, assert_trees_equal, tmp_path):
    guarded = spiky(tmp_path / "guarded", f"train.steps={STEPS}", "spike.max_consecutive=1000")
    summary = train(guarded, progress=False)
    logged = losses(tmp_path / "guarded")
    skipped = sorted(step for step, r in logged.items() if r["skipped"])
    assert skipped, "the symbols should spike the loss"
    assert all(logged[s]["loss"] > 2 * logged[skipped[0] - 1]["loss"] for s in skipped[:3])
    assert summary.skipped_steps == logged[STEPS - 1]["skipped_steps"] == len(skipped)

    # The same batches skipped by hand: the batch numbers are the steps they would have fed.
    ranges = SkipList.of([s, s + 1] for s in skipped).ranges
    by_hand = spiky(
        tmp_path / "by_hand", f"train.steps={STEPS - len(skipped)}", f"train.skip_batches={[list(r) for r in ranges]}"
    )
    train(by_hand, progress=False)
    assert not any(r["skipped"] for r in losses(tmp_path / "by_hand").values())
    _, state_a, data_a = final_state(guarded)
    _, state_b, data_b = final_state(by_hand)
    assert_trees_equal(state_a["params"], state_b["params"])
    assert_trees_equal(state_a["opt_state"], state_b["opt_state"])
    assert data_a == data_b  # both read exactly the same batches


def test_a_spike_that_persists_rewinds_once_skips_and_resumes_bitwise(spiky, final_state, assert_trees_equal, tmp_path):
    policy = ["spike.max_consecutive=3", "spike.rewind_steps=10", "spike.skip_batches=30", "checkpoint.every=10"]
    whole = spiky(tmp_path / "whole", f"train.steps={STEPS}", *policy)
    summary = train(whole, progress=False)
    assert summary.rewinds == 1 and summary.end_step == STEPS
    (recovery,) = json.loads((tmp_path / "whole" / "recoveries.json").read_text())
    first_bad = recovery["first_bad_step"]
    assert recovery["detected_at_step"] == first_bad + 2
    assert recovery["restored_step"] == max(s for s in range(0, STEPS, 10) if s <= first_bad - 10)
    assert recovery["skipped_batches"] == [recovery["restored_step"], recovery["restored_step"] + 30]
    assert recovery["redone_steps"] == recovery["detected_at_step"] + 1 - recovery["restored_step"]
    assert recovery["redone_flops"] > 0
    assert math.isfinite(summary.last_loss) and summary.last_loss < 3.5
    assert any(r.get("event") == "rewind" for r in records(tmp_path / "whole"))
    report = (tmp_path / "whole" / "report.md").read_text()
    assert "## Loss spikes" in report and f"rewound to step {recovery['restored_step']}" in report
    assert json.loads((tmp_path / "whole" / "report.json").read_text())["recoveries"] == [recovery]

    # Stopped after the rewind and resumed: the resumed run reads the skip from recoveries.json.
    halves = tmp_path / "halves"
    train(spiky(halves, f"train.steps={recovery['detected_at_step'] + 6}", *policy), progress=False)
    resumed = train(spiky(halves, f"train.steps={STEPS}", *policy), progress=False)
    assert resumed.rewinds == 0
    _, state_a, data_a = final_state(whole)
    _, state_b, data_b = final_state(spiky(halves, f"train.steps={STEPS}", *policy))
    assert_trees_equal(state_a["params"], state_b["params"])
    assert_trees_equal(state_a["opt_state"], state_b["opt_state"])
    assert data_a == data_b


def test_a_diverging_run_stops_with_its_last_good_checkpoint_and_valid_json(small_experiment, final_state, tmp_path):
    cfg = small_experiment(
        f"run_dir={tmp_path / 'run'}",
        "train.eval_every=0",
        "train.log_every=1",
        "train.steps=40",
        "optimizer.learning_rate=1e3",
        "checkpoint.every=2",
        "checkpoint.keep=1",
        "spike.max_consecutive=2",
        "spike.rewind_steps=2",
    )
    with pytest.raises(DivergedError, match=r"training diverged.*optimizer.learning_rate"):
        train(cfg, progress=False)
    logged = records(tmp_path / "run")
    assert any(r.get("nonfinite") for r in logged if "loss" in r)
    report = json.loads((tmp_path / "run" / "report.json").read_text(), parse_constant=float)
    assert report["status"] == "diverged"
    restored = final_state(cfg)
    if restored is not None:  # whatever checkpoint remains was written while the run was healthy
        _, state, _ = restored
        assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(state["params"]))
        assert int(state["guard"]["streak"]) == 0


def test_the_guard_rejects_non_finite_and_spiking_steps_and_learns_only_healthy_losses():
    rule = SpikeRule(window=4, factor=3.0, min_jump=0.1, max_consecutive=2)
    guard = init_guard()
    for step, loss in enumerate([2.0, 2.1, 1.9, 2.0]):
        healthy, guard, _ = judge(rule, guard, jax.numpy.int32(step), jax.numpy.float32(loss), jax.numpy.float32(1))
        assert bool(healthy)
    window = np.asarray(guard["losses"]).copy()
    assert sorted(window[:4]) == pytest.approx([1.9, 2.0, 2.0, 2.1]) and not window[4:].any()
    healthy, guard, flags = judge(rule, guard, jax.numpy.int32(4), jax.numpy.float32(9.0), jax.numpy.float32(1))
    assert not healthy and flags["spike"] == 1 and int(guard["streak"]) == 1
    np.testing.assert_array_equal(np.asarray(guard["losses"]), window)  # the spike did not enter the window
    healthy, guard, flags = judge(rule, guard, jax.numpy.int32(5), jax.numpy.float32(2.0), jax.numpy.float32(np.nan))
    assert not healthy and flags["nonfinite"] == 1 and int(guard["tripped_at"]) == 5
    healthy, guard, _ = judge(rule, guard, jax.numpy.int32(6), jax.numpy.float32(2.05), jax.numpy.float32(1))
    assert healthy and int(guard["streak"]) == 0 and int(guard["tripped_at"]) == 5  # latched until a rewind


def test_skip_lists_merge_and_rewinds_pick_the_newest_old_enough_checkpoint():
    skips = SkipList.of([[10, 20], [15, 30], [40, 41]])
    assert skips.ranges == ((10, 30), (40, 41)) and len(skips) == 21
    assert [skips.end_of_skip(b) for b in (9, 10, 29, 30, 40)] == [9, 30, 30, 30, 41]
    assert rewind_target([100, 200, 300, 400], first_bad_step=450, rewind_steps=100) == 300
    assert rewind_target([400], first_bad_step=450, rewind_steps=100) is None
