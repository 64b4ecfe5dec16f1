"""The global batch size at each step, with PaLM's batch-size ramp as the motivating case, and how
each batch splits into microbatches for gradient accumulation.

A fixed `train.microbatches` must serve every stage of a ramp, so the largest batch decides it and
the smaller ones are split finer than they need be (or a count that fits the largest leaves the
first stage needlessly small). `train.microbatch_size` fixes the rows of a microbatch instead: the
count follows the ramp (PaLM 540B on 6144 chips: 512 and 1024 sequences in one microbatch, 2048
in two), so every stage's activations are those of one microbatch_size-row microbatch.
"""

from __future__ import annotations

import math

from meshtrain.trainer.config.schema import TrainConfig


def batch_size_at(cfg: TrainConfig, step: int) -> int:
    """Global batch (sequences) used by step `step` (0-based): the last ramp entry at or before it."""
    size = cfg.batch_size
    for start, ramp_size in cfg.batch_ramp:
        if step >= start:
            size = ramp_size
    return size


def tokens_through(cfg: TrainConfig, seq_len: int, steps: int) -> int:
    """Tokens consumed by the first `steps` steps under the ramp (what a run of that length reads)."""
    boundaries = [0] + [start for start, _ in cfg.batch_ramp if start < steps] + [steps]
    return sum((end - begin) * batch_size_at(cfg, begin) * seq_len for begin, end in zip(boundaries, boundaries[1:]))


def batch_sizes(cfg: TrainConfig) -> tuple[int, ...]:
    """Every global batch size the run uses, in order (the sharding checks must hold for each)."""
    return (cfg.batch_size, *(size for start, size in cfg.batch_ramp if start < cfg.steps))


def microbatches_at(cfg: TrainConfig, batch_size: int) -> int:
    """How many microbatches a batch of `batch_size` sequences is split into: batch_size /
    microbatch_size (at least 1) when train.microbatch_size is set, else train.microbatches."""
    if cfg.microbatch_size:
        return max(1, batch_size // cfg.microbatch_size)
    return cfg.microbatches


def splits_into_microbatches(cfg: TrainConfig, batch_size: int) -> bool:
    """Whether a batch of `batch_size` sequences splits into equal microbatches: a multiple of
    train.microbatch_size (or smaller than it: one microbatch), else of train.microbatches."""
    if cfg.microbatch_size:
        return batch_size < cfg.microbatch_size or batch_size % cfg.microbatch_size == 0
    return cfg.microbatches >= 1 and batch_size % cfg.microbatches == 0


def largest_microbatch(cfg: TrainConfig) -> int:
    """The largest microbatch of the run, in sequences (what activation memory is sized by)."""
    return max(size // microbatches_at(cfg, size) for size in batch_sizes(cfg))


def accumulates(cfg: TrainConfig) -> bool:
    """Whether some stage accumulates gradients over more than one microbatch."""
    return any(microbatches_at(cfg, size) > 1 for size in batch_sizes(cfg))


def data_shards(cfg: TrainConfig, shards: int) -> int:
    """The number of data shards a run's documents are dealt into (data.shards resolved).

    0 (the default) is the greatest common divisor of every batch size the run may ever use
    (train.batch_size and every ramp entry, whatever train.steps is, so extending a run never
    changes it). Each step takes batch/shards rows from every shard in shard order, and any
    process count that can split every batch divides this number: so the global batch, and the
    data order, are the same on 1, 2 or 64 processes. -1 is one shard per process (the order then
    depends on the process count); a positive number is used as given. Returns -1 unresolved.
    """
    if shards:
        return shards
    return math.gcd(cfg.batch_size, *(size for _, size in cfg.batch_ramp))
