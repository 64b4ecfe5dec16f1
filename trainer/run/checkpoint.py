"""Orbax checkpoints of a run: train state plus the data-iterator state, written asynchronously.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-write
leaves the previous checkpoints intact and nothing is overwritten in place. Each checkpoint also
stores checksums of its arrays (trainer/run/checksums.py), summed on the devices while the save's
background thread writes, and verified on restore.

A checkpoint that fails to read or to verify is corrupt: it is moved aside to
checkpoints/corrupt/<step>-<time> (kept for a post-mortem, out of Orbax's sight, so the run can save
that step again) with one line naming it, and the next older one is tried. An asynchronous save that
failed (a full disk, a directory that became unwritable) is noticed at the next step, and the run
stops with one line naming the directory: the previous checkpoint is untouched.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import datetime
import json
import logging
import shutil
from collections.abc import Callable, Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp
from etils import epath

from meshtrain.trainer.config.schema import CheckpointConfig
from meshtrain.trainer.data import merge_states
from meshtrain.trainer.errors import UserError
from meshtrain.trainer.formatting import format_bytes
from meshtrain.trainer.run.checksums import checksums_json, mismatches, start_checksums
from meshtrain.trainer.run.collective import any_process, gather_json, sync_processes
from meshtrain.trainer.storage.paths import absolute, is_url
from meshtrain.trainer.storage.transfer import move_tree

log = logging.getLogger(__name__)

CORRUPT_DIR = "corrupt"


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (disk full, unwritable directory)."""


class CorruptCheckpoint(Exception):
    """A checkpoint's arrays do not match the checksums saved with them."""


class _DataWithChecksumsHandler(ocp.JsonCheckpointHandler):
    """The checkpoint's `data` item: the data-iterator state plus the state's checksums, which are
    still being summed on the devices while the save writes (Checkpoints.save hands them over as a
    Future, resolved once Orbax has its copy of the state).

    Orbax's JsonCheckpointHandler takes finished JSON, so the loop would wait for the sums (53%
    of an asynchronous save's duration, BENCHMARKS.md). This one waits for them in the save's
    background commit, then writes the same file JsonCheckpointHandler writes, whose restore
    (inherited) reads it back, from older checkpoints too.
    """

    async def async_save(self, directory, item=None, args=None):
        return [ocp.future.CommitFutureAwaitingContractedSignals(self._write(directory, args), name="data_save")]

    async def _write(self, directory, args: DataWithChecksumsSave) -> None:
        data = dict(args.data_state)
        if args.checksums is not None:
            # Waited for off the commit's event loop: blocking it left a JAX callback a closed loop.
            data["checksums"] = await asyncio.to_thread(lambda: checksums_json(args.checksums.result()))
        if jax.process_index() == 0:  # Orbax's primary host, as for JsonCheckpointHandler
            (directory / self._filename).write_text(json.dumps(data))


@ocp.args.register_with_handler(_DataWithChecksumsHandler, for_save=True)
@dataclasses.dataclass
class DataWithChecksumsSave(ocp.args.CheckpointArgs):
    """data_state: JSON; checksums: a Future of what checksums.start_checksums returns, or None."""

    data_state: Mapping[str, Any]
    checksums: Any = None


@ocp.args.register_with_handler(_DataWithChecksumsHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    """Reads the `data` item back (the file JsonCheckpointHandler and this handler both write)."""


class Checkpoints:
    """The checkpoints/ directory of one run."""

    def __init__(self, directory: epath.Path, cfg: CheckpointConfig):
        options = ocp.CheckpointManagerOptions(
            max_to_keep=cfg.keep,
            keep_period=cfg.keep_every,
            create=True,
            enable_async_checkpointing=cfg.async_save,
            cleanup_tmp_directories=True,
        )
        self.directory = absolute(directory)
        self.checksums = cfg.checksums
        self.async_save = cfg.async_save
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except OSError as error:
            raise UserError(f"cannot use {self.directory} for checkpoints: {error}") from None
        self._pending: tuple[int, int] | None = None  # (step, bytes) of the save in flight
        self._failed = False  # a write error has been raised

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state, local_data_state: dict) -> None:
        """Starts writing `state` as step `step`; returns before the write finishes when async.

        A collective: every process calls it with its own shards' data state, and the checkpoint
        holds all of them, so it restores onto any process count the data shards divide.
        """
        self._collect()  # the previous write's outcome first: a failure is reported as its own
        data_state = merge_states(gather_json(local_data_state))
        # An asynchronous save's sums are dispatched once Orbax has taken its copy of the state:
        # started before, they compete with that copy for the host's cores and lengthen the time
        # the loop is blocked. A synchronous save commits inside `save`, so it needs them first.
        checksums = concurrent.futures.Future() if self.checksums else None
        if checksums is not None and not self.async_save:
            _resolve_with_checksums(checksums, state)
        size = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
        try:
            self._manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), data=DataWithChecksumsSave(data_state, checksums)
                ),
                force=True,
            )
        except BaseException as error:
            if checksums is not None:
                checksums.cancel()  # a commit already under way stops waiting for them
            if isinstance(error, (OSError, ValueError)):  # a synchronous save: tensorstore reports ENOSPC as ValueError
                raise self._write_error(step, size, error) from None
            raise
        if checksums is not None and not checksums.done():
            _resolve_with_checksums(checksums, state)
        self._pending = (step, size)

    def check_errors(self) -> None:
        """Raises CheckpointWriteError if the last asynchronous save failed. Cheap while it is still
        being written (call it every step); once it is done, its outcome is collected."""
        if self._pending is None or self._manager.is_saving_in_progress():
            return
        self._collect()

    def _collect(self) -> None:
        try:
            self._manager.wait_until_finished()  # re-raises what the background write raised
        except Exception as error:
            if self._pending is None:
                raise
            step, size = self._pending
            self._pending = None
            raise self._write_error(step, size, error) from None
        self._pending = None

    def _write_error(self, step: int, size: int, error: BaseException) -> CheckpointWriteError:
        self._failed = True
        local = not is_url(self.directory) and self.directory.exists()
        free = shutil.disk_usage(self.directory).free if local else None
        older = [s for s in self.steps() if s < step]
        kept = f"the checkpoint of step {older[-1]} is intact" if older else "no earlier checkpoint exists"
        return CheckpointWriteError(
            f"checkpoint of step {step} could not be written to {self.directory} ({type(error).__name__}: "
            f"{_first_line(error)}); it needs about {format_bytes(size)}"
            + (f", {format_bytes(free)} is free" if free is not None else "")
            + f"; {kept}: make room (or fix the directory) and run the same command to resume"
        )

    def restore(self, step: int, abstract_state, fresh: Mapping[str, Callable[[], object]] | None = None):
        """(state, data_state) of checkpoint `step`, verified against its checksums.

        `abstract_state` (ShapeDtypeStructs, optionally with shardings) decides where arrays land,
        so the same files restore onto any device layout. `fresh` makes the parts of the state a
        checkpoint written by an older meshtrain lacks (the spike guard's): such a checkpoint is
        restored without them, and they start fresh.
        """
        filled: tuple[str, ...] = ()
        try:
            state, data = self._read(step, abstract_state)
        except Exception as error:
            older = {k: v for k, v in abstract_state.items() if k not in (fresh or {})}
            if len(older) == len(abstract_state):
                raise
            try:
                state, data = self._read(step, older)
            except Exception:
                raise error from None
            filled = tuple(fresh)
        expected = data.pop("checksums", None)
        if expected is not None:
            bad = mismatches(expected, state)
            if bad:
                shown = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                raise CorruptCheckpoint(f"checksums differ for {shown}")
        return {**state, **{key: fresh[key]() for key in filled}}, data

    def _read(self, step: int, abstract_state) -> tuple[dict, dict]:
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), data=DataRestore()),
        )
        return dict(restored["state"]), dict(restored["data"])

    def restore_latest(self, abstract_state, fresh=None) -> tuple[int, object, dict] | None:
        """(step, state, data_state) of the newest checkpoint that reads back; None if there is none.

        Each one that does not is moved aside (see the module doc) before the next older is tried.
        When every one is corrupt, that is an error, not a silent fresh start.
        """
        steps = self.steps()
        for step in reversed(steps):
            try:
                state, data = self.restore(step, abstract_state, fresh)
            except Exception as error:  # A damaged checkpoint must not end the run: set it aside, fall back.
                failed = error
            else:
                failed = None
            if not any_process(failed is not None):
                return step, state, data
            self.set_aside(step, failed)
        if steps:
            raise UserError(
                f"no checkpoint in {self.directory} could be read (steps {', '.join(map(str, steps))}, all moved to "
                f"{self.directory / CORRUPT_DIR}): run the same command again to train from step 0"
            )
        return None

    def set_aside(self, step: int, error: BaseException | None) -> None:
        """Moves checkpoint `step` to checkpoints/corrupt/<step>-<time> (process 0), on every process."""
        when = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.directory / CORRUPT_DIR / f"{step}-{when}"
        if jax.process_index() == 0:
            target.parent.mkdir(parents=True, exist_ok=True)
            move_tree(self.directory / str(step), target)
            reason = f"{type(error).__name__}: {_first_line(error)}" if error is not None else "unreadable on a peer"
            older = [s for s in self.steps() if s < step]
            fallback = f"restoring step {older[-1]} instead" if older else "no older checkpoint: starting afresh"
            print(f"meshtrain: checkpoint of step {step} is corrupt ({reason}); moved to {target}; {fallback}")
        sync_processes(f"meshtrain: checkpoint {step} set aside")
        self._manager.reload()

    def delete_after(self, step: int) -> list[int]:
        """Deletes the checkpoints newer than `step` (a rewind abandons them); returns their steps."""
        newer = [s for s in self.steps() if s > step]
        for s in newer:
            self._manager.delete(s)
        return newer

    def wait(self) -> None:
        """Blocks until every pending asynchronous write is on disk; raises CheckpointWriteError if it failed."""
        self._collect()

    @contextlib.contextmanager
    def pending_error_first(self):
        """A small write that fails on a full disk (the data ledger, the metrics line, the goodput
        record) has usually failed the checkpoint still being written in the background too, whose own
        error says how many bytes it needed and how many are free: that error is raised first."""
        try:
            yield
        except UserError:
            self.wait()
            raise

    def close(self) -> None:
        """Waits for the last write and releases Orbax's threads. After a write error was already
        raised, the same failure is not raised a second time from here."""
        try:
            if not self._failed:
                self.wait()
        finally:
            self._manager.close()


def _resolve_with_checksums(future: concurrent.futures.Future, state) -> None:
    """Starts the state's checksums into `future`, which the save's background commit waits on; a
    failure to start them (a lost peer in the collective) is handed to the commit too, so it ends
    instead of waiting forever, and raised here."""
    try:
        future.set_result(start_checksums(state))
    except BaseException as error:
        future.set_exception(error)
        raise


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
