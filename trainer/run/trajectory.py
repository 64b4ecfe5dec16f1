"""Where a training loop is: the state, its step, and the data stream and prefetcher that feed it.

A rewind (trainer/run/recovery.py) replaces all of them at once, which is why they live together.
"""

from __future__ import annotations

from meshtrain.trainer.config.batch_schedule import batch_size_at, data_shards
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.data import BatchStream
from meshtrain.trainer.run.checkpoint import Checkpoints
from meshtrain.trainer.run.prefetch import Prefetcher


class Trajectory:
    """Where the loop is: the state, its step, and the data stream and prefetcher that feed it.
    A rewind replaces all of them at once."""

    def __init__(self, cfg: ExperimentConfig, tokenizer, put, feeder, fresh_state, checkpoints: Checkpoints, abstract):
        self.cfg, self.tokenizer, self.put, self.feeder = cfg, tokenizer, put, feeder
        self.fresh_state, self.checkpoints, self.abstract = fresh_state, checkpoints, abstract
        self.prefetcher: Prefetcher | None = None

    def start(self, restored, skips) -> None:
        """From a restored (step, state, data_state), or from the initial state when None."""
        self.stream = BatchStream(
            self.cfg.data,
            self.tokenizer,
            seed=self.cfg.seed,
            split="train",
            num_shards=data_shards(self.cfg.train, self.cfg.data.shards),
            feeder_index=self.feeder.index,
            feeder_count=self.feeder.count,
        )
        if restored:
            self.step, self.state, data_state = restored
            self.stream.set_state(data_state)
            self.next_batch = int(data_state.get("next_batch", self.step))
        else:
            self.step, self.state, self.next_batch = 0, self.fresh_state(), 0
        self.data_state = None
        self.refill(skips)

    def refill(self, skips) -> None:
        if self.prefetcher:
            self.prefetcher.close()
        train = self.cfg.train
        rows_at = lambda step: batch_size_at(train, step) // self.feeder.count
        self.prefetcher = Prefetcher(
            self.stream, rows_at, self.step, train.steps, self.cfg.data.prefetch, self.put, self.next_batch, skips
        )

    def close(self) -> None:
        if self.prefetcher:
            self.prefetcher.close()
