"""The data pipeline on real text: builders, exact tokenization, packing, resume, sharding."""

import dataclasses
import json
import os
import sys
import time

import numpy as np
import pytest

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data import (
    FEATURES,
    PROVENANCE,
    BatchStream,
    merge_states,
    open_split,
    prepare_dataset,
    tokenizer_for,
)
from meshtrain.trainer.data.tokenizer import tokenizer_path
from meshtrain.trainer.errors import DataError

SEQ_LEN = 128


def _cfg(data_dir, **overrides) -> DataConfig:
    base = DataConfig(
        dataset="python_docs",
        text_dir=None,
        text_key="text",
        data_dir=str(data_dir),
        stage_dir=os.path.join(str(data_dir), "staged"),
        train_split="train",
        eval_split="validation",
        eval_fraction=0.05,
        tokenizer=None,
        seq_len=SEQ_LEN,
        shuffle=True,
        shards=-1,
        prefetch=2,
        mixture=(),
        mixture_schedule=(),
    )
    return dataclasses.replace(base, **overrides)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("datasets")


@pytest.fixture(scope="module")
def cfg(data_dir):
    return _cfg(data_dir)


@pytest.fixture(scope="module")
def sp(cfg):
    return tokenizer_for(cfg, 1024)


def _write_corpus(root, n_txt=4, n_jsonl=26):
    """Short documents (one segment each at SEQ_LEN), some .txt and the rest .jsonl lines."""
    os.makedirs(root, exist_ok=True)
    for i in range(n_txt):
        with open(os.path.join(root, f"doc{i}.txt"), "w") as f:
            f.write(f"Text file {i}:\n\tindented  line {i * 7}\n")
    with open(os.path.join(root, "more.jsonl"), "w") as f:
        for i in range(n_jsonl):
            f.write(json.dumps({"text": f"jsonl document {i}, with  two spaces and ünïcode."}))
            f.write("\n")


@pytest.fixture(scope="module")
def local_cfg(tmp_path_factory, data_dir, sp):
    root = tmp_path_factory.mktemp("corpus")
    _write_corpus(root)
    return _cfg(
        data_dir,
        dataset="local_text",
        text_dir=str(root),
        eval_fraction=0.2,
        tokenizer=tokenizer_path(_cfg(data_dir), 1024),
    )


def _segments(batch, sp):
    """Decoded text of each real segment's inputs (a whole short document), over all rows."""
    texts = []
    for inputs, seg in zip(batch["inputs"], batch["segment_ids"]):
        for s in range(1, seg.max() + 1):
            texts.append(sp.decode(inputs[seg == s].tolist()))
    return texts


def _one_pass(cfg, sp, split, **kwargs):
    stream = BatchStream(cfg, sp, seed=0, split=split, repeat=False, **kwargs)
    batches = []
    while True:
        try:
            batches.append(stream.next_batch(8))
        except StopIteration:
            return {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}


# --- builders -------------------------------------------------------------------------------


def test_python_docs_splits_are_disjoint_and_nonempty(cfg):
    prepare_dataset(cfg)
    start = time.perf_counter()
    prepare_dataset(cfg)  # Second time: already prepared.
    assert time.perf_counter() - start < 1.0
    train, val = open_split(cfg, "train"), open_split(cfg, "validation")
    assert len(val) > 0 and len(train) > 10 * len(val)
    train_texts = {train[i] for i in range(len(train))}
    val_texts = [val[i] for i in range(len(val))]
    assert all(isinstance(t, str) and t for t in val_texts)
    assert not train_texts & set(val_texts)
    assert not any(name.startswith("incomplete") for name in os.listdir(cfg.data_dir))


def test_data_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    prepare_dataset(_cfg("~/ds"))
    assert os.path.isdir(tmp_path / "ds" / "python_docs")


def test_unprepared_tfds_name_fails_fast_naming_data_dir(tmp_path):
    start = time.perf_counter()
    with pytest.raises(DataError, match="tfds build") as e:
        open_split(_cfg(tmp_path, dataset="c4/en:3.1.0"), "train")
    assert str(tmp_path) in str(e.value)
    assert time.perf_counter() - start < 5.0


def test_local_text_reads_txt_and_jsonl(local_cfg):
    train, val = open_split(local_cfg, "train"), open_split(local_cfg, "validation")
    assert len(train) + len(val) == 30 and len(val) > 0
    texts = {s[i] for s in (train, val) for i in range(len(s))}
    assert "Text file 1:\n\tindented  line 7\n" in texts
    assert "jsonl document 25, with  two spaces and ünïcode." in texts


def test_local_text_errors_name_the_file(tmp_path, data_dir):
    missing = tmp_path / "nope"
    with pytest.raises(DataError, match="nope"):
        prepare_dataset(_cfg(data_dir, dataset="local_text", text_dir=str(missing)))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .jsonl"):
        prepare_dataset(_cfg(data_dir, dataset="local_text", text_dir=str(tmp_path / "empty")))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jsonl").write_text('{"text": "fine"}\n{"body": "no text key"}\n')
    (bad / "b.txt").write_text("another document")
    with pytest.raises(DataError, match=r"a\.jsonl:2: .*'text'"):
        prepare_dataset(_cfg(data_dir, dataset="local_text", text_dir=str(bad)))


def test_editing_local_text_dir_reprepares(tmp_path, data_dir):
    root = tmp_path / "corpus"
    _write_corpus(root, n_txt=2, n_jsonl=3)
    cfg = _cfg(data_dir, dataset="local_text", text_dir=str(root), eval_fraction=0.3)
    before = len(open_split(cfg, "train")) + len(open_split(cfg, "validation"))
    (root / "new.txt").write_text("a brand new document")
    after = len(open_split(cfg, "train")) + len(open_split(cfg, "validation"))
    assert (before, after) == (5, 6)
    assert len(os.listdir(os.path.join(data_dir, "local_text"))) >= 2  # One folder per content.


# --- tokenizer ------------------------------------------------------------------------------

TRICKY = [
    "",
    " ",
    "\n",
    "a\nb",
    "  leading",
    "trailing  ",
    "tab\tsep",
    "x  \n\n   y ",
    "12345 007 3.14159",
    "héllo wörld 世界 🙂",
    "\r\n",
    "\u2581meta\u2581 space",
    "\x00\x01\x7f",
    "e\u0301",
    "    def f(x):\n        return x  # done\n",
]


def test_tokenizer_round_trips_exactly(cfg, sp):
    for text in TRICKY:
        assert sp.decode(sp.encode(text)) == text, repr(text)
    val = open_split(cfg, "validation")
    for i in range(len(val)):
        assert sp.decode(sp.encode(val[i])) == val[i]
    assert sp.pad_id == 0 and sp.eos_id == 1 and sp.size <= 1024


def test_tokenizer_is_cached(cfg, sp):
    path = tokenizer_path(cfg, 1024)
    mtime = os.stat(path).st_mtime_ns
    start = time.perf_counter()
    again = tokenizer_for(cfg, 1024)
    assert time.perf_counter() - start < 1.0 and os.stat(path).st_mtime_ns == mtime
    assert again.encode("print(x)") == sp.encode("print(x)")
    with pytest.raises(DataError, match="missing.model"):
        tokenizer_for(dataclasses.replace(cfg, tokenizer=str(path) + ".missing.model"), 1024)


# --- packing --------------------------------------------------------------------------------


def test_rows_are_consistently_packed(cfg, sp):
    batch = BatchStream(cfg, sp, seed=3, feeder_index=0, feeder_count=1).next_batch(64)
    assert set(batch) == {*FEATURES, *PROVENANCE}
    assert batch["sources"].shape == (64,) and (batch["sources"] == 0).all()
    for k in FEATURES + ("documents",):
        v = batch[k]
        assert v.shape == (64, SEQ_LEN)
        assert v.dtype == (np.float32 if k == "weights" else np.int32)
    seg, pos = batch["segment_ids"], batch["positions"]
    np.testing.assert_array_equal(batch["weights"], (seg > 0).astype(np.float32))
    for r in range(64):
        real = seg[r] > 0
        assert real[0] and not np.any(np.diff(real.astype(int)) > 0)  # Padding only at the end.
        assert np.all(np.diff(seg[r][real]) >= 0)  # Segments are contiguous, numbered from 1.
        assert set(seg[r][real]) == set(range(1, seg[r].max() + 1))
        for s in range(1, seg[r].max() + 1):
            np.testing.assert_array_equal(pos[r][seg[r] == s], np.arange((seg[r] == s).sum()))
        same = (seg[r][1:] == seg[r][:-1]) & real[1:]
        np.testing.assert_array_equal(batch["inputs"][r][1:][same], batch["targets"][r][:-1][same])
        assert np.all(batch["inputs"][r][~real] == 0) and np.all(batch["targets"][r][~real] == 0)
    assert (batch["targets"] == sp.eos_id).any()  # Documents end in eos.


def test_every_short_document_appears_whole(local_cfg, sp):
    rows = _one_pass(local_cfg, sp, "eval", feeder_index=0, feeder_count=1)
    val = open_split(local_cfg, "validation")
    assert sorted(_segments(rows, sp)) == sorted(val[i] for i in range(len(val)))
    last = rows["targets"][rows["segment_ids"] > 0]
    assert (last == sp.eos_id).sum() == len(val)


def test_long_documents_are_cut_into_seq_len_chunks(cfg, sp):
    rows = _one_pass(cfg, sp, "eval", feeder_index=0, feeder_count=1)
    val = open_split(cfg, "validation")
    expected = sum(len(sp.encode(val[i])) for i in range(len(val)))  # ids + eos - 1 each.
    assert rows["weights"].sum() == expected
    assert rows["weights"].sum(axis=1).max() == SEQ_LEN


# --- resume and sharding --------------------------------------------------------------------


def _rows(stream, sizes):
    return np.concatenate([stream.next_batch(n)["inputs"] for n in sizes])


@pytest.mark.parametrize("sizes", [[16] * 6, [3, 9, 1, 16, 5, 7, 2, 11]])
def test_resume_continues_exactly(local_cfg, sp, sizes):
    """Crosses several epochs of the 24-document train split (each epoch a new order)."""
    make = lambda: BatchStream(local_cfg, sp, seed=7, feeder_index=0, feeder_count=1)
    half = len(sizes) // 2
    expected = _rows(make(), sizes)
    b = make()
    first = _rows(b, sizes[:half])
    state = json.loads(json.dumps(b.get_state()))
    c = make()
    c.set_state(state)
    np.testing.assert_array_equal(np.concatenate([first, _rows(c, sizes[half:])]), expected)


def test_epochs_reshuffle_and_seeds_differ(local_cfg, sp):
    def order(seed, n_rows):
        stream = BatchStream(local_cfg, sp, seed=seed, feeder_index=0, feeder_count=1)
        return _segments(stream.next_batch(n_rows), sp)

    docs = len(open_split(local_cfg, "train"))
    texts = order(0, 40)
    epoch1, epoch2 = texts[:docs], texts[docs : 2 * docs]
    assert sorted(epoch1) == sorted(epoch2) and epoch1 != epoch2
    assert order(0, 10) == texts[: len(order(0, 10))] and order(1, 10) != order(0, 10)


def test_set_state_rejects_another_stream(local_cfg, sp):
    a = BatchStream(local_cfg, sp, seed=0, feeder_index=0, feeder_count=1)
    b = BatchStream(local_cfg, sp, seed=0, feeder_index=0, feeder_count=2)
    with pytest.raises(DataError, match="num_shards"):
        b.set_state(a.get_state())


def test_processes_read_disjoint_documents_covering_the_split(local_cfg, sp):
    shards = [set(_segments(_one_pass(local_cfg, sp, "train", feeder_index=p, feeder_count=2), sp)) for p in range(2)]
    train = open_split(local_cfg, "train")
    assert shards[0] and shards[1] and not shards[0] & shards[1]
    assert shards[0] | shards[1] == {train[i] for i in range(len(train))}


def test_fixed_shards_give_one_global_stream_on_any_process_count(local_cfg, sp):
    """With data.shards fixed, 1 process reads what 2 processes read together, and a state written
    by either resumes on the other: the data half of restoring onto another host count."""
    cfg = dataclasses.replace(local_cfg, shards=2)
    make = lambda p, n: BatchStream(cfg, sp, seed=5, feeder_index=p, feeder_count=n)
    alone, pair = make(0, 1), [make(0, 2), make(1, 2)]
    for rows in (4, 8, 2):
        together = [stream.next_batch(rows // 2)["inputs"] for stream in pair]
        np.testing.assert_array_equal(alone.next_batch(rows)["inputs"], np.concatenate(together))
    merged = merge_states([stream.get_state() for stream in pair])
    resumed_alone = make(0, 1)
    resumed_alone.set_state(json.loads(json.dumps(merged)))
    resumed_pair = [make(0, 2), make(1, 2)]
    for stream in resumed_pair:
        stream.set_state(alone.get_state())
    expected = alone.next_batch(6)["inputs"]
    np.testing.assert_array_equal(resumed_alone.next_batch(6)["inputs"], expected)
    np.testing.assert_array_equal(np.concatenate([stream.next_batch(3)["inputs"] for stream in resumed_pair]), expected)
    with pytest.raises(DataError, match="data.shards=2"):
        make(0, 3)


def test_no_tensorflow_imported():
    assert "tensorflow" not in sys.modules
