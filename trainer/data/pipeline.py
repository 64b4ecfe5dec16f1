"""Documents -> tokens -> packed rows -> batches: a deterministic, resumable grain pipeline.

Per row (all shape [seq_len]):
  inputs, targets  int32  token ids; targets[i] is the token after inputs[i] in the same document
  segment_ids      int32  1, 2, ... per document (chunk) in the row; 0 = padding
  positions        int32  position within the document (chunk), restarting at 0
  weights          float32 1.0 on real target tokens, 0.0 on padding
and, for provenance only (never sent to the device):
  documents        int32  [seq_len] index of each token's document in its source's split; -1 = padding
  sources          int32  [] the row's source (index into the data's sources); -1 = an empty row

A document is encode(text) + [eos]; longer ones are cut into seq_len chunks, each its own
segment (positions restart per chunk). Rows are filled first-fit, so attention masks built from
segment_ids never cross a document boundary.

Every source's documents are dealt into `num_shards` shards (document i to shard i mod shards),
each packed on its own: a reader per (shard, source). A batch of N global rows takes N/shards
consecutive rows from each shard, in shard order; which source each global row is drawn from is
the mixture's rule (trainer/data/mixture.py), a function of the row's global number alone. A
feeder (a process, or the processes holding the same rows: trainer/step/partition.py's Feeder)
reads its contiguous block of shards. So the global batch is the same whatever the feeder count,
and feeders never read the same document.

Everything before packing is a grain MapDataset (random access), so a reader's state is a few
integers: where the packer's last emitted bin started and how far into it we are. That is what
makes resume exact and cheap, and why rows (not batches) are the unit: the caller may ask for a
different number of rows each step (batch-size ramp) without breaking resume.
"""

import dataclasses
import json
from typing import Any

import grain
import jax
import numpy as np

from meshtrain.trainer.config.schema import DataConfig
from meshtrain.trainer.data.mixture import RowSources, Source, sources_of, weight_stages
from meshtrain.trainer.data.sources import open_split
from meshtrain.trainer.data.tokenizer_kinds import Tokenizer
from meshtrain.trainer.errors import DataError

FEATURES = ("inputs", "targets", "segment_ids", "positions", "weights")
PROVENANCE = ("documents", "sources")
# Rows packed together before any is emitted: more bins = less padding but more read-ahead.
_PACKING_BINS = 16
# Documents read ahead by grain's reader threads (which also tokenize: the map runs there), for the
# whole stream: shared among its readers (shards x sources), so that 16 readers do not tokenize 16
# times as far ahead, or start 16 times the threads, of one. With more readers than threads each
# reads in the caller's thread (the trainer's prefetch thread), and the shards interleave anyway.
_READ_THREADS = 2
_READ_AHEAD = 64
# Source k's documents are shuffled with seed + k * _SOURCE_SEED_STRIDE: independent orders per source.
_SOURCE_SEED_STRIDE = 1_000_003


class _ChunkDocument(grain.experimental.FlatMapTransform):
    """A tokenized document -> one or more {inputs, targets, documents} of at most seq_len tokens."""

    def __init__(self, seq_len: int):
        self.seq_len = seq_len
        self.max_fan_out = 1 << 20  # Only bounds the MapDataset variant; we flat-map an iterator.

    def flat_map(self, document: tuple[int, np.ndarray]) -> list[dict[str, np.ndarray]]:
        index, ids = document
        inputs, targets = ids[:-1], ids[1:]
        return [
            {
                "inputs": inputs[i : i + self.seq_len],
                "targets": targets[i : i + self.seq_len],
                "documents": np.full(len(inputs[i : i + self.seq_len]), index, np.int32),
            }
            for i in range(0, len(inputs), self.seq_len)
        ]


def _tokenize(tokenizer: Tokenizer, texts):
    """document index -> (index, int32 ids of the document followed by eos)."""
    eos = tokenizer.eos_id
    if eos is None:
        raise DataError(
            f"the tokenizer {tokenizer.path} has no end-of-text token: documents must end in one; use a "
            "tokenizer with an eos (a tokenizer.json's eos_token in its tokenizer_config.json), or data.tokenizer=null "
            "to train one"
        )

    def tokenize(index: int) -> tuple[int, np.ndarray]:
        return index, np.asarray(tokenizer.encode(texts[index]) + [eos], dtype=np.int32)

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
        "documents": np.where(segment_ids > 0, row["documents"], -1).astype(np.int32),
    }


def resolve_shards(num_shards: int, feeder_count: int) -> int:
    """data.shards as a count: -1 is one per feeder; 0 must have been resolved by the caller
    (trainer/config/batch_schedule.data_shards, which needs the batch sizes)."""
    if num_shards == 0:
        raise ValueError("meshtrain bug: data.shards=0 reached the pipeline unresolved (use data_shards)")
    return feeder_count if num_shards == -1 else num_shards


def process_shards(num_shards: int, feeder_index: int, feeder_count: int) -> tuple[int, ...]:
    """The document shards feeder `feeder_index` reads: a contiguous block of num_shards / F."""
    if num_shards % feeder_count:
        raise DataError(
            f"data.shards={num_shards} does not split over {feeder_count} processes loading distinct rows: "
            f"use a multiple of {feeder_count}, or 0 to derive it from the batch sizes"
        )
    per_feeder = num_shards // feeder_count
    return tuple(range(feeder_index * per_feeder, (feeder_index + 1) * per_feeder))


class _Reader:
    """Packed rows of one source's documents [shard::num_shards] of one split."""

    def __init__(
        self, texts, shard: int, num_shards: int, cfg: DataConfig, tokenizer, seed: int, repeat: bool, readers: int
    ):
        docs = grain.MapDataset.range(len(texts))[shard::num_shards]
        self.documents = len(docs)
        if repeat:
            if cfg.shuffle:
                docs = docs.shuffle(seed)  # Reseeded per epoch by grain (seed + epoch).
            docs = docs.repeat()
        docs = docs.map(_tokenize(tokenizer, texts))
        read = grain.ReadOptions(
            num_threads=_READ_THREADS // readers, prefetch_buffer_size=max(1, _READ_AHEAD // readers)
        )
        rows = docs.to_iter_dataset(read)
        rows = grain.experimental.FlatMapIterDataset(rows, _ChunkDocument(cfg.seq_len))
        rows = grain.experimental.FirstFitPackIterDataset(
            rows,
            length_struct={"inputs": cfg.seq_len, "targets": cfg.seq_len, "documents": cfg.seq_len},
            num_packing_bins=_PACKING_BINS,
            shuffle_bins=False,
        )
        self._iterator = iter(rows.map(_finish_row))
        self.exhausted = self.documents == 0

    def next_row(self) -> dict[str, np.ndarray] | None:
        """The next packed row, or None at the end of a single pass."""
        if not self.exhausted:
            try:
                return next(self._iterator)
            except StopIteration:
                self.exhausted = True
        return None

    def get_state(self) -> dict[str, Any]:
        if self.documents == 0:
            return {"exhausted": True}
        state = json.loads(json.dumps(self._iterator.get_state(), default=_json_default))
        return {"exhausted": self.exhausted, "grain": state}

    def set_state(self, state: dict[str, Any]) -> None:
        if self.documents:
            self._iterator.set_state(state["grain"])
        self.exhausted = bool(state["exhausted"])


@dataclasses.dataclass
class _Position:
    """Where the global stream is: rows read by all feeders together, and the mixture stage."""

    rows: int = 0
    stage: int = 0
    stage_start: int = 0  # the global row at which `stage` began


class BatchStream:
    """Packed rows for this feeder, served as [num_rows, seq_len] batches.

    split="train": each source's train split, documents shuffled per epoch with `seed` (when
    cfg.shuffle) and repeated forever, rows mixed by the weights. split="eval" (give `source`, one
    name of the data's sources): one deterministic pass over that source's eval split, in stored
    order; the last batch is padded with empty rows (weights 0) and the next call raises
    StopIteration. Build a fresh eval stream for each evaluation to score the same rows.

    `feeder_index` of `feeder_count` default to this process of all of them; `num_shards` is
    data.shards resolved (see data_shards in trainer/config/batch_schedule.py; -1 = one per feeder),
    by default cfg.shards when that is not 0.
    """

    def __init__(
        self,
        cfg: DataConfig,
        tokenizer: Tokenizer,
        seed: int,
        split: str = "train",
        *,
        num_shards: int | None = None,
        source: str | None = None,
        feeder_index: int | None = None,
        feeder_count: int | None = None,
        repeat: bool | None = None,
    ):
        if split not in ("train", "eval"):
            raise ValueError(f"meshtrain bug: split={split!r}, expected 'train' or 'eval'")
        self.seq_len = cfg.seq_len
        self.split = split
        self.feeder_count = jax.process_count() if feeder_count is None else feeder_count
        feeder_index = jax.process_index() if feeder_index is None else feeder_index
        self.num_shards = resolve_shards(cfg.shards if num_shards is None else num_shards, self.feeder_count)
        self.shards = process_shards(self.num_shards, feeder_index, self.feeder_count)
        self.sources: tuple[Source, ...] = sources_of(cfg)
        names = [s.name for s in self.sources]
        if source is not None and source not in names:
            raise ValueError(f"meshtrain bug: no source {source!r} in {names}")
        repeat = split == "train" if repeat is None else repeat
        if source is None:
            stages = weight_stages(cfg)
        else:
            stages = ((0, tuple(float(name == source) for name in names)),)
        self._row_sources = RowSources(stages)
        self._used = [k for k in range(len(names)) if any(weights[k] > 0 for _, weights in stages)]
        self._readers: dict[tuple[int, int], _Reader] = {}
        documents = {}
        for k in self._used:
            data = self.sources[k].data
            texts = open_split(data, data.train_split if split == "train" else data.eval_split)
            documents[self.sources[k].name] = len(texts)
            if repeat and len(texts) < self.num_shards:
                raise DataError(
                    f"{texts!r} has {len(texts)} documents, too few for {self.num_shards} data shards: each "
                    "shard needs at least one; use more documents or fewer shards (data.shards)"
                )
            for shard in self.shards:
                source_seed = seed + k * _SOURCE_SEED_STRIDE
                readers = len(self.shards) * len(self._used)
                self._readers[shard, k] = _Reader(
                    texts, shard, self.num_shards, data, tokenizer, source_seed, repeat, readers
                )
        self._position = _Position()
        self._identity = {
            "split": split,
            "seq_len": cfg.seq_len,
            "num_shards": self.num_shards,
            "documents": documents,
        }

    def next_batch(self, num_rows: int, step: int | None = None) -> dict[str, np.ndarray]:
        """The next num_rows rows of this feeder, stacked: {feature: [num_rows, seq_len]} plus the
        provenance arrays. `step` (the training step the batch is for) picks the mixture's weights;
        without a schedule it does not matter."""
        per_shard, rest = divmod(num_rows, len(self.shards))
        if rest:
            raise DataError(
                f"a batch of {num_rows} rows does not split over this process's {len(self.shards)} data shards: "
                "make every batch size a multiple of data.shards (or leave data.shards=0)"
            )
        position = self._position
        stage = self._row_sources.stage_at(step) if step is not None else position.stage
        if stage != position.stage:
            position.stage, position.stage_start = stage, position.rows
        rows, produced = [], False
        for shard in self.shards:
            first = position.rows + shard * per_shard - position.stage_start
            for j in range(per_shard):
                k = self._row_sources.source_of(stage, first + j)
                row = self._readers[shard, k].next_row()
                produced |= row is not None
                rows.append({**row, "sources": np.int32(k)} if row is not None else self._empty_row())
        if not produced:
            raise StopIteration(f"split {self.split!r} is exhausted")
        position.rows += per_shard * self.num_shards
        return {k: np.stack([r[k] for r in rows]) for k in (*FEATURES, *PROVENANCE)}

    def _empty_row(self) -> dict[str, np.ndarray]:
        row = {k: np.zeros(self.seq_len, np.float32 if k == "weights" else np.int32) for k in FEATURES}
        return {**row, "documents": np.full(self.seq_len, -1, np.int32), "sources": np.int32(-1)}

    def get_state(self) -> dict[str, Any]:
        """A small JSON-serializable dict: where the global stream is, this feeder's readers' grain
        states, and what they are valid for. merge_states() joins every feeder's into the global one."""
        shards = {str(shard): {} for shard in self.shards}
        for (shard, k), reader in self._readers.items():
            shards[str(shard)][self.sources[k].name] = reader.get_state()
        return {**self._identity, **dataclasses.asdict(self._position), "shards": shards}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues exactly where the stream(s) that produced `state` were."""
        saved = {k: state.get(k) for k in self._identity}
        if saved != self._identity:
            raise DataError(
                f"data state was saved for {saved} but this stream is {self._identity}: resume with the same "
                "data (sources, splits, documents), seq_len and number of data shards (data.shards=-1 ties it "
                "to the process count; data.shards=0 or a fixed number resumes on any process count that divides it)"
            )
        self._position = _Position(**{f.name: int(state[f.name]) for f in dataclasses.fields(_Position)})
        for (shard, k), reader in self._readers.items():
            reader.set_state(state["shards"][str(shard)][self.sources[k].name])


def merge_states(states: list[dict[str, Any]]) -> dict[str, Any]:
    """The global data state from every feeder's get_state() (same identity, disjoint shards)."""
    merged = {**states[0], "shards": {}}
    for state in states:
        merged["shards"].update(state["shards"])
    return merged


def _json_default(value):
    """numpy scalars in grain's state -> Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"grain iterator state holds a {type(value).__name__}, not JSON-serializable")
