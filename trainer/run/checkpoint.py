"""Orbax checkpoints of a run: train state plus the data-iterator state, written asynchronously.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-write
leaves the previous checkpoints intact and nothing is overwritten in place. On restore, a
checkpoint that fails to read is reported and the next older one is tried.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from meshtrain.trainer.config.schema import CheckpointConfig
from meshtrain.trainer.data import merge_states
from meshtrain.trainer.errors import UserError

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoints/ directory of one run."""

    def __init__(self, directory: Path, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, keep_period=cfg.keep_every, create=True, enable_async_checkpointing=cfg.async_save
        )
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state, local_data_state: dict) -> None:
        """Starts writing `state` as step `step`; returns before the write finishes when async.

        A collective: every process calls it with its own shards' data state, and the checkpoint
        holds all of them, so it restores onto any process count the data shards divide.
        """
        data_state = merge_states(_gather_json(local_data_state))
        self._manager.save(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
            force=True,
        )

    def restore_latest(self, abstract_state) -> tuple[int, object, dict] | None:
        """(step, state, data_state) of the newest checkpoint that reads back; None if there is none.

        When checkpoints exist but none reads back, that is an error, not a fresh start.

        `abstract_state` (ShapeDtypeStructs, optionally with shardings) decides where arrays land,
        so the same files restore onto any device layout.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
                    ),
                )
            except Exception as error:  # A damaged checkpoint must not end the run: fall back.
                log.warning(
                    "checkpoint at step %d could not be read (%s: %s); trying an older one",
                    step,
                    type(error).__name__,
                    error,
                )
                failures.append(f"step {step}: {type(error).__name__}: {error}")
                continue
            return step, restored["state"], restored["data"]
        if failures:
            raise UserError(f"no checkpoint in {self.directory} could be read: " + "; ".join(failures))
        return None

    def wait(self) -> None:
        """Blocks until every pending asynchronous write is on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()


def _gather_json(value) -> list:
    """Every process's `value` (JSON-serializable), in process order, on every process."""
    if jax.process_count() == 1:
        return [value]
    payload = np.frombuffer(json.dumps(value).encode(), np.uint8)
    sizes = multihost_utils.process_allgather(np.asarray([payload.size], np.int64)).reshape(-1)
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: payload.size] = payload
    rows = multihost_utils.process_allgather(padded)
    return [json.loads(bytes(row[:size])) for row, size in zip(rows, sizes)]
