"""The global batch size at each step, with PaLM's batch-size ramp as the motivating case."""

from __future__ import annotations

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
