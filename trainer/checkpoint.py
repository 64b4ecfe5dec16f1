"""Orbax checkpoints of a run: train state plus the data-iterator state, written asynchronously.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-write
leaves the previous checkpoints intact and nothing is overwritten in place. On restore, a
checkpoint that fails to read is reported and the next older one is tried.
"""

from __future__ import annotations

import logging
from pathlib import Path

import orbax.checkpoint as ocp

from trainer.config.schema import CheckpointConfig
from trainer.errors import UserError

log = logging.getLogger(__name__)


class Checkpoints:
    """The checkpoints/ directory of one run."""

    def __init__(self, directory: Path, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep, keep_period=cfg.keep_every, create=True,
            enable_async_checkpointing=cfg.async_save)
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(self.directory, options=options)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, state, data_state: dict) -> None:
        """Starts writing `state` as step `step`; returns before the write finishes when async."""
        self._manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore_latest(self, abstract_state) -> tuple[int, object, dict] | None:
        """(step, state, data_state) of the newest checkpoint that reads back; None if there is none.

        When checkpoints exist but none reads back, that is an error, not a fresh start.

        `abstract_state` (ShapeDtypeStructs, optionally with shardings) decides where arrays land,
        so the same files restore onto any device layout.
        """
        failures = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            try:
                restored = self._manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
            except Exception as error:  # A damaged checkpoint must not end the run: fall back.
                log.warning("checkpoint at step %d could not be read (%s: %s); trying an older one",
                            step, type(error).__name__, error)
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
