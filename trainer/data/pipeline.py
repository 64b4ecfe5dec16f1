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

from trainer.config.schema import DataConfig
from trainer.data import tokenizer as tok
from trainer.data.sources import open_split
from trainer.errors import DataError

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
        return [{"inputs": inputs[i:i + self.seq_len], "targets": targets[i:i + self.seq_len]}
                for i in range(0, len(inputs), self.seq_len)]


def _tokenize(sp: spm.SentencePieceProcessor):
    """text -> int32 ids of the document followed by eos."""
    eos = sp.eos_id()
    if eos < 0:
        raise DataError("the tokenizer has no eos piece: documents must end in one; retrain it "
                        "with trainer.data.tokenizer.train_tokenizer (eos id 1)")

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


class BatchStream:
    """Packed rows of one split for this process, served as [num_rows, seq_len] batches.

    split == cfg.train_split (or repeat=True): documents are shuffled per epoch with `seed` (when
    cfg.shuffle) and repeated forever. Otherwise (eval): one deterministic pass in stored order;
    the last batch is padded with all-zero rows (weights 0) and the next call raises
    StopIteration. Build a fresh eval stream for each evaluation to score the same rows.

    Each process reads documents [process_index::process_count], so hosts never overlap.
    """

    def __init__(self, cfg: DataConfig, tokenizer: spm.SentencePieceProcessor, seed: int,
                 split: str = "train", process_index: int | None = None,
                 process_count: int | None = None, repeat: bool | None = None):
        self.seq_len = cfg.seq_len
        self.split = split
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
        source = open_split(cfg, split)
        docs = grain.MapDataset.source(source)[process_index::process_count]
        if len(docs) == 0:
            raise DataError(f"{source!r} has too few documents for {process_count} processes: "
                            "each process needs at least one; use more documents")
        self.num_documents = len(docs)
        repeat = (split == cfg.train_split) if repeat is None else repeat
        if repeat:
            if cfg.shuffle:
                docs = docs.shuffle(seed)  # Reseeded per epoch by grain (seed + epoch).
            docs = docs.repeat()
        docs = docs.map(_tokenize(tokenizer))
        rows = docs.to_iter_dataset(grain.ReadOptions(num_threads=_READ_THREADS,
                                                      prefetch_buffer_size=_READ_AHEAD))
        rows = grain.experimental.FlatMapIterDataset(rows, _ChunkDocument(cfg.seq_len))
        rows = grain.experimental.FirstFitPackIterDataset(
            rows, length_struct={"inputs": cfg.seq_len, "targets": cfg.seq_len},
            num_packing_bins=_PACKING_BINS, shuffle_bins=False)
        self._iterator = iter(rows.map(_finish_row))
        self._identity = {"split": split, "documents": self.num_documents,
                          "seq_len": cfg.seq_len, "process": [process_index, process_count]}
        self._exhausted = False

    def next_batch(self, num_rows: int) -> dict[str, np.ndarray]:
        """The next num_rows rows stacked: {feature: [num_rows, seq_len]}."""
        rows = []
        while len(rows) < num_rows and not self._exhausted:
            try:
                rows.append(next(self._iterator))
            except StopIteration:
                self._exhausted = True
        if not rows:
            raise StopIteration(f"split {self.split!r} is exhausted")
        batch = {k: np.stack([r[k] for r in rows]) for k in FEATURES}
        if len(rows) < num_rows:  # Only at the end of a single pass: pad with empty rows.
            pad = num_rows - len(rows)
            batch = {k: np.concatenate([v, np.zeros((pad, self.seq_len), v.dtype)])
                     for k, v in batch.items()}
        return batch

    def get_state(self) -> dict[str, Any]:
        """A small JSON-serializable dict: grain's iterator state plus what it is valid for."""
        state = json.loads(json.dumps(self._iterator.get_state(), default=_json_default))
        return {**self._identity, "exhausted": self._exhausted, "grain": state}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues exactly where the stream that produced `state` was."""
        saved = {k: state.get(k) for k in self._identity}
        saved["process"] = list(saved["process"] or [])
        if saved != self._identity:
            raise DataError(f"data state was saved for {saved} but this stream is "
                            f"{self._identity}: resume with the same dataset, split, seq_len and "
                            "process count, or start the data stream afresh")
        self._iterator.set_state(state["grain"])
        self._exhausted = bool(state.get("exhausted", False))


def _json_default(value):
    """numpy scalars in grain's state -> Python numbers."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"grain iterator state holds a {type(value).__name__}, not JSON-serializable")
