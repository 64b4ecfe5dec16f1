"""Data mixtures: weighted sources, schedules, exact resume on any feeder count, and the errors.

The two built-in sources every Python carries (CPython's docs and its standard library's source)
make a real two-source mixture; a local_text directory makes a third.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from meshtrain.trainer.config import load_experiment
from meshtrain.trainer.config.batch_schedule import data_shards
from meshtrain.trainer.config.schema import SourceConfig
from meshtrain.trainer.data import BatchStream, merge_states, open_split, prepare_dataset, sources_of, tokenizer_for
from meshtrain.trainer.data.mixture import RowSources
from meshtrain.trainer.errors import ConfigError, DataError

# grain's mix turns the weights into integer proportions, the smallest one 100 parts; so a source's
# realized share of any window of N rows is within 2 rows of weight * N, plus that rounding.
WINDOW_ROWS = 2
ROUNDING = 0.01


def _within_tolerance(counts: np.ndarray, weights, n: int) -> None:
    for k, weight in enumerate(weights):
        slack = WINDOW_ROWS + ROUNDING * weight * n
        assert np.abs(counts[:, k] - weight * n).max() <= slack, (k, weight, n)


def _window_counts(sources: np.ndarray, num_sources: int, n: int) -> np.ndarray:
    """[windows, sources]: how many rows of each source every window of n consecutive rows holds."""
    cumulative = np.concatenate([np.zeros((1, num_sources)), np.cumsum(np.eye(num_sources)[sources], axis=0)])
    return cumulative[n:] - cumulative[:-n]


@pytest.mark.parametrize("weights", [(0.5, 0.27, 0.13, 0.05, 0.04, 0.01), (0.7, 0.3), (1 / 3, 1 / 3, 1 / 3)])
def test_every_window_of_rows_holds_each_source_at_its_weight(weights):
    """PaLM's six weights among them: any N consecutive rows, for N from 1 to 4096."""
    selection = RowSources(((0, weights),))
    rows = np.array([selection.source_of(0, i) for i in range(20_000)])
    for n in (1, 2, 3, 7, 16, 64, 100, 333, 1000, 4096):
        _within_tolerance(_window_counts(rows, len(weights), n), weights, n)


@pytest.fixture(scope="module")
def mixture(data_dir, small_experiment, tmp_path_factory):
    """The default experiment's two sources plus a local_text directory, with a schedule at step 4."""
    corpus = tmp_path_factory.mktemp("notes")
    for i in range(40):
        (corpus / f"note{i:02d}.txt").write_text(f"note {i}: " + "plain words and more words " * (i % 7 + 1))
    cfg = small_experiment(
        "data.mixture=[{dataset: python_docs, weight: 0.5}, {dataset: python_source, weight: 0.3}, "
        f"{{dataset: local_text, name: notes, text_dir: {corpus}, weight: 0.2}}]",
        "data.mixture_schedule=[[4, [0.1, 0.1, 0.8]]]",
        "train.batch_size=16",
    )
    prepare_dataset(cfg.data)
    return cfg, tokenizer_for(cfg.data, cfg.model.vocab_size)


def _stream(cfg, tokenizer, feeder_index=0, feeder_count=1, shards=8):
    return BatchStream(
        cfg.data, tokenizer, cfg.seed, "train", num_shards=shards, feeder_index=feeder_index, feeder_count=feeder_count
    )


def test_a_stream_follows_the_weights_and_switches_at_the_scheduled_step(mixture):
    cfg, tokenizer = mixture
    stream = _stream(cfg, tokenizer)
    before = np.concatenate([stream.next_batch(16, step)["sources"] for step in range(4)])
    after = np.concatenate([stream.next_batch(16, step)["sources"] for step in range(4, 40)])
    _within_tolerance(_window_counts(before, 3, 64), (0.5, 0.3, 0.2), 64)
    for n in (16, 160, 576):  # from the scheduled step on, the new weights hold in every window
        _within_tolerance(_window_counts(after, 3, n), (0.1, 0.1, 0.8), n)


def test_packing_never_crosses_documents_or_sources(mixture):
    """Every segment is a run of one document of the row's own source, in order."""
    cfg, tokenizer = mixture
    splits = [open_split(s.data, "train") for s in sources_of(cfg.data)]
    stream = _stream(cfg, tokenizer)
    for step in range(6):
        batch = stream.next_batch(16, step)
        for row in range(16):
            seg, docs, source = batch["segment_ids"][row], batch["documents"][row], batch["sources"][row]
            assert (docs[seg == 0] == -1).all()
            for s in range(1, seg.max() + 1):
                in_segment = docs[seg == s]
                assert (in_segment == in_segment[0]).all()
                text = tokenizer.decode(batch["inputs"][row][seg == s].tolist())
                assert text in splits[source][int(in_segment[0])]


def _read(streams, steps, rows=16):
    """The global batches of `steps`, the feeders' rows concatenated in feeder order."""
    out = []
    for step in steps:
        parts = [stream.next_batch(rows // len(streams), step) for stream in streams]
        out.append({k: np.concatenate([p[k] for p in parts]) for k in parts[0]})
    return out


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


@pytest.mark.parametrize("stop_at,first,then", [(2, 1, 4), (5, 4, 2), (4, 2, 1)])
def test_resume_is_exact_across_the_schedule_and_feeder_counts(mixture, stop_at, first, then):
    """Read to `stop_at` on `first` feeders, resume on `then`: the global batches of an
    uninterrupted single stream, whether the schedule's step falls before or after the stop."""
    cfg, tokenizer = mixture
    whole = _read([_stream(cfg, tokenizer)], range(10))
    before = [_stream(cfg, tokenizer, i, first) for i in range(first)]
    head = _read(before, range(stop_at))
    state = json.loads(json.dumps(merge_states([s.get_state() for s in before])))
    after = [_stream(cfg, tokenizer, i, then) for i in range(then)]
    for stream in after:
        stream.set_state(state)
    _assert_same(head + _read(after, range(stop_at, 10)), whole)


def test_the_default_shard_count_follows_the_batch_sizes(small_experiment):
    cfg = small_experiment("train.batch_size=24", "train.batch_ramp=[[10, 48], [20, 96]]")
    assert data_shards(cfg.train, cfg.data.shards) == 24
    assert data_shards(small_experiment("data.shards=-1").train, -1) == -1
    with pytest.raises(ConfigError, match=r"data.shards=3,.*batch size 8 is not a multiple"):
        small_experiment("data.shards=3")


@pytest.mark.parametrize(
    "override,message",
    [
        ("data.mixture=[{dataset: python_docs, wieght: 1}]", r"unknown key 'wieght'"),
        ("data.mixture=[{dataset: python_docs}]", r"has no 'weight'"),
        ("data.mixture=[{dataset: python_docs, weight: -1}]", r"weight=-1.0 must be a number >= 0"),
        ("data.mixture=[{dataset: python_docs, weight: 0}]", r"every weight is 0"),
        (
            "data.mixture=[{dataset: python_docs, weight: 1}, {dataset: python_docs, weight: 1}]",
            r"named 'python_docs' more than once",
        ),
        ("data.mixture=[{dataset: local_text, weight: 1}]", r"needs text_dir"),
        (("data.dataset=python_docs", "data.mixture_schedule=[[5, [1.0]]]"), r"data.mixture is empty"),
    ],
)
def test_bad_mixtures_are_one_line_naming_the_entry(small_experiment, override, message):
    with pytest.raises(ConfigError, match=message) as error:
        small_experiment(*((override,) if isinstance(override, str) else override))
    assert "\n" not in str(error.value)


def test_a_schedule_needs_one_weight_per_source_and_rising_steps(small_experiment):
    two = "data.mixture=[{dataset: python_docs, weight: 1}, {dataset: python_source, weight: 1}]"
    with pytest.raises(ConfigError, match=r"expected 2 weights"):
        small_experiment(two, "data.mixture_schedule=[[5, [1.0]]]")
    with pytest.raises(ConfigError, match=r"strictly increasing"):
        small_experiment(two, "data.mixture_schedule=[[5, [1.0, 0.0]], [5, [0.0, 1.0]]]")


def test_unprepared_sources_are_each_named_with_their_build_command(small_experiment, data_dir):
    cfg = load_experiment("palm-540b-v4-6144", [f"data.data_dir={data_dir}"])
    names = [s.name for s in sources_of(cfg.data)]
    assert len(names) == 6 and sum(s.weight for s in sources_of(cfg.data)) == pytest.approx(1.0)
    with pytest.raises(DataError) as error:
        prepare_dataset(cfg.data)
    message = str(error.value)
    assert "6 of the data's 6 source(s) are not prepared" in message and "\n" not in message
    for source in sources_of(cfg.data):
        assert f"tfds build {source.data.dataset} --data_dir" in message


def test_a_source_with_its_own_splits(mixture):
    cfg, tokenizer = mixture
    docs = dataclasses.replace(cfg.data.mixture[0], eval_split="train", name="docs_on_train")
    data = dataclasses.replace(cfg.data, mixture=(docs, *cfg.data.mixture[1:]))
    source = sources_of(data)[0]
    assert isinstance(data.mixture[0], SourceConfig)
    assert (source.name, source.data.eval_split, source.data.train_split) == ("docs_on_train", "train", "train")


def test_eval_reports_each_source_beside_the_weighted_total(small_experiment, tmp_path):
    from meshtrain.trainer.run.train import train

    run_dir = tmp_path / "run"
    cfg = small_experiment(f"run_dir={run_dir}", "train.steps=2", "train.eval_every=2", "train.eval_batches=2")
    summary = train(cfg, progress=False)
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if "eval_loss" in line]
    (record,) = evals
    docs, source = record["eval_loss/python_docs"], record["eval_loss/python_source"]
    assert docs != source and record["eval_loss"] == pytest.approx(0.7 * docs + 0.3 * source)
    assert summary.last_eval_loss == record["eval_loss"]
    report = json.loads((run_dir / "report.json").read_text())
    assert report["final_eval_loss_by_source"] == {"python_docs": docs, "python_source": source}
    assert "final eval loss, python_source" in (run_dir / "report.md").read_text()
    events = b"".join(p.read_bytes() for p in (run_dir / "tensorboard").glob("*tfevents*"))
    assert b"eval_loss/python_docs" in events and b"eval_loss/python_source" in events


def test_a_changed_local_text_directory_is_refused_before_preparing_it(small_experiment, tmp_path):
    from meshtrain.trainer.run.train import train

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(30):
        (corpus / f"{i}.txt").write_text(f"document number {i} " * 5)
    data_dir = tmp_path / "data"
    overrides = [
        f"run_dir={tmp_path / 'run'}",
        "data.dataset=local_text",
        f"data.text_dir={corpus}",
        f"data.data_dir={data_dir}",
        "train.eval_every=0",
        "data.eval_fraction=0.2",
    ]
    train(small_experiment(*overrides, "train.steps=2"), progress=False)
    prepared = sorted(p.name for p in (data_dir / "local_text").iterdir())
    (corpus / "new.txt").write_text("one more document")
    with pytest.raises(DataError, match=r"the run's data changed \(source 'local_text'") as error:
        train(small_experiment(*overrides, "train.steps=4"), progress=False)
    assert "\n" not in str(error.value)
    assert sorted(p.name for p in (data_dir / "local_text").iterdir()) == prepared  # nothing prepared again
