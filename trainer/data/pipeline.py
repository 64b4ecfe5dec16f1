"""Documents -> tokens -> packed rows: a deterministic, resumable grain pipeline.

Per row (all shape [seq_len]):
  inputs, targets  int32  token ids; targets[i] is the token after inputs[i] in the same document
  segment_ids      int32  1, 2, ... per document (chunk) in the row; 0 = padding
  positions        int32  position within the document (chunk), restarting at 0
  weights          float32 1.0 on real target tokens, 0.0 on padding

A document is encode(text) + [eos]; longer ones are cut into seq_len chunks, each its own
segment (positions restart per chunk). Rows are filled first-fit, so attention masks built from
segment_ids never cross a document boundary.

Everything before packing is a grain MapDataset (random access), so the iterator state is a few
integers: where the packer's last emitted bin started and how far into it we are. That is what
makes resume exact and cheap, and why rows (not batches) are the unit: the caller may ask for a
different number of rows each step (batch-size ramp) without breaking resume.
"""

import json
from typing import Any

import grain
import jax
import numpy as np
import sentencepiece as spm

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data import tokenizer as tok
from meshtrain.trainer.data.sources import open_split
from meshtrain.trainer.errors import DataError

FEATURES = ("inputs", "targets", "segment_ids", "positions", "weights")
# Rows packed together before any is emitted: more bins = less padding but more read-ahead.
_PACKING_BINS = 16
# Documents read ahead by grain's reader threads (which also tokenize: the map runs there).
_READ_THREADS = 2
_READ_AHEAD = 64


class _ChunkDocument(grain.experimental.FlatMapTransform):
    """A tokenized document -> one or more {inputs, targets} of at most seq_len tokens."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.max_fan_out = 1 << 20  # Only bounds the MapDataset variant; we flat-map an iterator.

    def flat_map(self, ids: np.ndarray) -> list[dict[str, np.ndarray]]:
        inputs, targets = ids[:-1], ids[1:]
        return [
            {"inputs": inputs[i : i + self.seq_len], "targets": targets[i : i + self.seq_len]}
            for i in range(0, len(inputs), self.seq_len)
        ]


def _tokenize(sp: spm.SentencePieceProcessor):
    """text -> int32 ids of the document followed by eos."""
    eos = sp.eos_id()
    if eos < 0:
        raise DataError(
            "the tokenizer has no eos piece: documents must end in one; retrain it "
            "with trainer.data.tokenizer.train_tokenizer (eos id 1)"
        )

    def tokenize(text: str) -> np.ndarray:
        return np.asarray(tok.encode(sp, text) + [eos], dtype=np.int32)

    return tokenize


def _finish_row(row: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Grain's packed row (inputs_segment_ids, ...) renamed, with weights from the segments."""
    segment_ids = row["inputs_segment_ids"].astype(np.int32)
    return {
        "inputs": row["inputs"].astype(np.int32),
        "targets": row["targets"].astype(np.int32),
        "segment_ids": segment_ids,
        "positions": row["inputs_positions"].astype(np.int32),
        "weights": (segment_ids > 0).astype(np.float32),
    }


def process_shards(num_shards: int, feeder_index: int, feeder_count: int) -> tuple[int, ...]:
    """The document shards feeder `feeder_index` reads: a contiguous block of num_shards / F.

    num_shards = -1 means one per feeder. A fixed number makes the global stream independent of
    the process count, which is what lets a run resume on more or fewer hosts.
    """
    num_shards = feeder_count if num_shards == -1 else num_shards
    if num_shards % feeder_count:
        raise DataError(
            f"data.shards={num_shards} does not split over {feeder_count} processes loading distinct rows: "
            f"use a multiple of {feeder_count}, or -1 for one shard each"
        )
    per_feeder = num_shards // feeder_count
    return tuple(range(feeder_index * per_feeder, (feeder_index + 1) * per_feeder))


class _ShardReader:
    """Packed rows of documents [shard::num_shards] of one split."""

    def __init__(self, docs, cfg: DataConfig, tokenizer, seed: int, repeat: bool):
        if repeat:
            if cfg.shuffle:
                docs = docs.shuffle(seed)  # Reseeded per epoch by grain (seed + epoch).
            docs = docs.repeat()
        docs = docs.map(_tokenize(tokenizer))
        rows = docs.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS, prefetch_buffer_size=_READ_AHEAD))
        rows = grain.experimental.FlatMapIterDataset(rows, _ChunkDocument(cfg.seq_len))
        rows = grain.experimental.FirstFitPackIterDataset(
            rows,
            length_struct={"inputs": cfg.seq_len, "targets": cfg.seq_len},
            num_packing_bins=_PACKING_BINS,
            shuffle_bins=False,
        )
        self._iterator = iter(rows.map(_finish_row))
        self.exhausted = False

    def rows(self, count: int) -> list[dict[str, np.ndarray]]:
        rows = []
        while len(rows) < count and not self.exhausted:
            try:
                rows.append(next(self._iterator))
            except StopIteration:
                self.exhausted = True
        return rows

    def get_state(self) -> dict[str, Any]:
        state = json.loads(json.dumps(self._iterator.get_state(), default=_json_default))
        return {"exhausted": self.exhausted, "grain": state}

    def set_state(self, state: dict[str, Any]) -> None:
        self._iterator.set_state(state["grain"])
        self.exhausted = bool(state["exhausted"])


class BatchStream:
    """Packed rows of one split for this process, served as [num_rows, seq_len] batches.

    split == cfg.train_split (or repeat=True): documents are shuffled per epoch with `seed` (when
    cfg.shuffle) and repeated forever. Otherwise (eval): one deterministic pass in stored order;
    the last batch is padded with all-zero rows (weights 0) and the next call raises
    StopIteration. Build a fresh eval stream for each evaluation to score the same rows.

    The documents are dealt into `cfg.shards` shards (document i to shard i mod shards), each
    packed on its own; a batch takes equal rows from each of this feeder's shards, in shard
    order. A feeder is a process, or the processes that hold the same rows of a batch
    (trainer/step/partition.py's Feeder): `feeder_index` of `feeder_count`, by default this
    process of all of them. So the global batch (all feeders' rows, in feeder order) is the same
    whatever the process count, and feeders never read the same document.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: spm.SentencePieceProcessor,
        seed: int,
        split: str = "train",
        feeder_index: int | None = None,
        feeder_count: int | None = None,
        repeat: bool | None = None,
    ):
        self.seq_len = cfg.seq_len
        self.split = split
        feeder_index = jax.process_index() if feeder_index is None else feeder_index
        feeder_count = jax.process_count() if feeder_count is None else feeder_count
        self.shards = process_shards(cfg.shards, feeder_index, feeder_count)
        num_shards = len(self.shards) * feeder_count
        source = open_split(cfg, split)
        everything = grain.MapDataset.source(source)
        if len(everything) < num_shards:
            raise DataError(
                f"{source!r} has {len(everything)} documents, too few for {num_shards} "
                "shards: each shard needs at least one; use more documents or fewer "
                "shards (data.shards, or processes)"
            )
        repeat = (split == cfg.train_split) if repeat is None else repeat
        self._readers = [
            _ShardReader(everything[shard::num_shards], cfg, tokenizer, seed, repeat) for shard in self.shards
        ]
        self._identity = {
            "split": split,
            "documents": len(everything),
            "seq_len": cfg.seq_len,
            "num_shards": num_shards,
        }

    def next_batch(self, num_rows: int) -> dict[str, np.ndarray]:
        """The next num_rows rows stacked: {feature: [num_rows, seq_len]}."""
        per_shard, rest = divmod(num_rows, len(self._readers))
        if rest:
            raise DataError(
                f"a batch of {num_rows} rows does not split over this process's "
                f"{len(self._readers)} data shards: make every batch size a multiple of "
                "data.shards"
            )
        parts = [reader.rows(per_shard) for reader in self._readers]
        if not any(parts):
            raise StopIteration(f"split {self.split!r} is exhausted")
        # Only at the end of a single pass are shards short: pad them with empty rows.
        rows = [row for part in parts for row in part + [self._empty_row()] * (per_shard - len(part))]
        return {k: np.stack([r[k] for r in rows]) for k in FEATURES}

    def _empty_row(self) -> dict[str, np.ndarray]:
        return {k: np.zeros(self.seq_len, np.float32 if k == "weights" else np.int32) for k in FEATURES}

    def get_state(self) -> dict[str, Any]:
        """A small JSON-serializable dict: this process's shards' grain states plus what they are
        valid for. merge_states() joins the states of every process into the global one."""
        shards = {str(shard): reader.get_state() for shard, reader in zip(self.shards, self._readers)}
        return {**self._identity, "shards": shards}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues exactly where the stream(s) that produced `state` were."""
        saved = {k: state.get(k) for k in self._identity}
        if saved != self._identity:
            raise DataError(
                f"data state was saved for {saved} but this stream is "
                f"{self._identity}: resume with the same dataset, split, seq_len and "
                "number of data shards (data.shards=-1 ties it to the process count; "
                "a fixed data.shards resumes on any process count that divides it)"
            )
        for shard, reader in zip(self.shards, self._readers):
            reader.set_state(state["shards"][str(shard)])


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The global data state from every process's get_state() (same identity, disjoint shards)."""
    merged = {**states[0], "shards": {}}
    for state in states:
        merged["shards"].update(state["shards"])
    return merged


def _json_default(value):
    """numpy scalars in grain's state -> Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"grain iterator state holds a {type(value).__name__}, not JSON-serializable")
