"""What did step N train on? A step's global batch rebuilt from the run's data ledger.

The ledger (trainer/tracking/data_ledger.py) holds the data state before each logged step's batch.
A step is rebuilt from the newest logged step at or before it: its state is restored into one
stream per data shard, and batches are read forward with the rule training reads them by
(trainer/run/prefetch.read_step: the batch-size ramp, the mixture schedule, and the skip list of
train.skip_batches and the run's recoveries). No model runs, and no more of the dataset is read
than those batches' documents. Only the shards that hold the rows asked for are opened (rows of a
batch are laid out shard by shard), so the first few rows of a PaLM-sized batch are quick.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import numpy as np

from meshtrain.trainer.config import load_config_file
from meshtrain.trainer.config.batch_schedule import batch_size_at, data_shards
from meshtrain.trainer.data import BatchStream, Tokenizer, load_tokenizer, sources_of
from meshtrain.trainer.data.tokenizer_kinds import tokenizer_in
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.run.prefetch import read_step
from meshtrain.trainer.run.recovery import skip_list
from meshtrain.trainer.storage.paths import as_path
from meshtrain.trainer.tracking.data_ledger import read_ledger
from meshtrain.trainer.tracking.recoveries import load_recoveries


@dataclasses.dataclass(frozen=True)
class Segment:
    document: int  # index of the document in its source's train split
    tokens: list[int]  # the segment's input tokens, and the target after the last (its eos, or more text)
    text: str


@dataclasses.dataclass(frozen=True)
class Row:
    index: int  # row of the global batch
    source: str | None  # None: an empty row
    segments: list[Segment]


@dataclasses.dataclass(frozen=True)
class StepBatch:
    step: int
    batch: int  # the global batch number (skipped batches count)
    batch_size: int
    skipped_before: tuple[int, int] | None  # [start, end): batches skipped right before this one
    rows: list[Row]
    arrays: dict[str, np.ndarray]  # the rows shown: what the train step received (FEATURES) and PROVENANCE


def _run_tokenizer(run_dir, cfg) -> Tokenizer:
    """The tokenizer the run carries (copied in at its start), else the one its config names."""
    path = tokenizer_in(run_dir) or cfg.data.tokenizer
    if not path:
        raise UserError(
            f"{run_dir} carries no tokenizer (a run copies its tokenizer in when it starts; this one is older): "
            "data show needs the tokenizer the run was trained with"
        )
    return load_tokenizer(path)


def step_batches(run_dir, steps: range, rows: int | None = None) -> Iterator[StepBatch]:
    """The global batch of each step in `steps` (the first `rows` rows of each, or all)."""
    run_dir = as_path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir}: no config.yaml; expected a meshtrain run directory")
    cfg = load_config_file(run_dir / "config.yaml")
    ledger = read_ledger(run_dir)
    logged = [s for s in ledger if s <= steps.start]
    if not logged:
        first = (
            f"; its first logged step is {min(ledger)}" if ledger else " (it has no data ledger: a run from before it)"
        )
        raise UserError(f"{run_dir}: no logged step at or before step {steps.start}{first}")
    record = ledger[logged[-1]]
    tokenizer = _run_tokenizer(run_dir, cfg)
    skips = skip_list(cfg.train.skip_batches, load_recoveries(run_dir))
    num_shards = data_shards(cfg.train, cfg.data.shards)
    if num_shards == -1:  # one per process: the ledger's state says how many there were
        num_shards = record["state"]["num_shards"]
    largest = max(batch_size_at(cfg.train, s) for s in steps)
    wanted = largest if rows is None else min(rows, largest)
    # Shard s holds rows [s * n, (s + 1) * n) of a batch of n * num_shards rows.
    needed = range(min(num_shards, max(math.ceil(wanted * num_shards / b) for b in _sizes(cfg, steps))))
    streams = []
    for shard in needed:
        stream = BatchStream(
            cfg.data, tokenizer, cfg.seed, "train", num_shards=num_shards, feeder_index=shard, feeder_count=num_shards
        )
        stream.set_state(record["state"])
        streams.append(stream)
    names = [s.name for s in sources_of(cfg.data)]
    batch_number = record["batch"]
    for step in range(record["step"], steps.stop):
        size = batch_size_at(cfg.train, step)
        reads = [read_step(stream, size // num_shards, step, batch_number, skips) for stream in streams]
        number = reads[0][1]
        batch_number = number + 1
        if step in steps:
            host = {k: np.concatenate([r[0][k] for r in reads])[: min(wanted, size)] for k in reads[0][0]}
            yield StepBatch(step, number, size, _skip_ending_at(skips, number), _rows(host, tokenizer, names), host)


def _sizes(cfg, steps: range) -> list[int]:
    return [batch_size_at(cfg.train, s) for s in steps]


def _skip_ending_at(skips, batch: int) -> tuple[int, int] | None:
    """The skipped range (merged) that ends right before `batch`, if any."""
    for start, end in skips.ranges:
        if end == batch:
            return start, end
    return None


def _rows(host: dict, tokenizer: Tokenizer, names: list[str]) -> list[Row]:
    out = []
    for r in range(len(host["inputs"])):
        seg, source = host["segment_ids"][r], int(host["sources"][r])
        segments = []
        for s in range(1, int(seg.max()) + 1 if seg.size else 1):
            where = seg == s
            tokens = [int(t) for t in host["inputs"][r][where]] + [int(host["targets"][r][where][-1])]
            segments.append(Segment(int(host["documents"][r][where][0]), tokens, tokenizer.decode(tokens)))
        out.append(Row(r, names[source] if source >= 0 else None, segments))
    return out
