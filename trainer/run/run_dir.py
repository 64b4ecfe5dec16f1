"""The run directory: the resolved config, metrics, TensorBoard events and checkpoints of one run.

A run directory is its own record: `config.yaml` alone repeats or resumes the run. Starting a run on
an existing directory resumes it, but only if it is the same run: a different model, data, seed or
optimizer would silently continue training something else, so that is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os

from etils import epath

from meshtrain.trainer.config import config_differences, dump_config, load_config_file
from meshtrain.trainer.config.schema import RUN_IDENTITY_SECTIONS, ExperimentConfig
from meshtrain.trainer.data import sources_of
from meshtrain.trainer.data.sources import dataset_key
from meshtrain.trainer.data.tokenizer_kinds import Tokenizer, copy_tokenizer, tokenizer_in
from meshtrain.trainer.errors import ConfigError, DataError, UserError
from meshtrain.trainer.storage.atomic import write_atomic
from meshtrain.trainer.storage.paths import as_path, is_url


def run_dir_path(cfg: ExperimentConfig) -> epath.Path:
    """run_dir (a local path or an object-store URL), by default runs/<name>."""
    return as_path(cfg.run_dir or f"runs/{cfg.name}", "run_dir")


def check_run_dir(path: epath.Path) -> None:
    """Raises a one-line UserError when `path` cannot be a run directory: an existing file, or a
    place where nothing can be written (a read-only filesystem, no permission). An object store
    has no such places; what it refuses is reported by the first write (open_run_dir)."""
    if is_url(path):
        return
    if path.exists() and not path.is_dir():
        raise UserError(f"run_dir={path} is an existing file, not a directory: choose another run_dir=PATH")
    existing = next(p for p in (path, *epath.Path(os.path.abspath(path)).parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"run_dir={path}: {existing} is a file, so the directory cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"run_dir={path}: {existing} is not writable (read-only filesystem or no permission): "
            "choose another run_dir=PATH"
        )


def saved_run(path: epath.Path) -> ExperimentConfig | None:
    """The config of the run `path` holds, None when it holds nothing to resume (no checkpoint)."""
    saved_path = path / "config.yaml"
    if not saved_path.is_file() or not _has_checkpoint(path):
        return None
    return load_config_file(saved_path)


def pin_schedule(cfg: ExperimentConfig, saved: ExperimentConfig | None) -> ExperimentConfig:
    """cfg with the learning-rate schedule's decay length fixed: `optimizer.decay_steps: null`
    means train.steps when the run starts, and that number is the run's from then on (it is
    written into config.yaml). Raising train.steps later extends the run at the schedule's final
    value instead of stretching the decay, which would raise the learning rate at the resume step
    (rewriting the history the checkpoints were trained under). `saved`: the run's saved_run()."""
    if cfg.optimizer.decay_steps is not None:
        return cfg
    if saved is None:
        decay_steps = cfg.train.steps
    else:  # a run from before the length was pinned decayed over the train.steps it last ran with
        decay_steps = saved.optimizer.decay_steps or saved.train.steps
    decay_steps = max(decay_steps, cfg.optimizer.warmup_steps + 1)  # as the schedule takes it
    return dataclasses.replace(cfg, optimizer=dataclasses.replace(cfg.optimizer, decay_steps=decay_steps))


def check_same_run(cfg: ExperimentConfig, saved: ExperimentConfig | None, path: epath.Path) -> None:
    """Raises when `path` holds a run whose identity (model, data, seed, optimizer) differs from `cfg`.

    A directory without a checkpoint holds nothing to resume (a start that failed, or a run killed
    before its first save): its config.yaml does not bind the next command. `saved`: saved_run(path)."""
    if saved is None:
        return
    differences = config_differences(saved, cfg, RUN_IDENTITY_SECTIONS)
    if differences:
        shown = ", ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in differences)
        raise ConfigError(
            f"run directory {path} holds a different run ({shown}); use another run_dir=PATH or the run's own settings"
        )


DATA_SOURCES_FILE = "data_sources.json"


def data_identity(cfg: ExperimentConfig) -> dict[str, str]:
    """Source name -> what it was prepared as: a built-in dataset's key is a hash of its text (a
    local_text directory's file names and bytes), a TFDS name is itself. Costs one read of a
    local_text directory, no preparation."""
    return {source.name: dataset_key(source.data) for source in sources_of(cfg.data)}


def check_same_data(cfg: ExperimentConfig, saved: ExperimentConfig | None, path: epath.Path) -> None:
    """Raises before any preparation work when a resumed run's data changed under it (a file added
    to, removed from or edited in a local_text directory): its data state would not resume, and
    the run would train on other documents than it says. `saved`: saved_run(path)."""
    recorded = path / DATA_SOURCES_FILE
    if saved is None or not recorded.is_file():
        return
    before, now = json.loads(recorded.read_text()), data_identity(cfg)
    changed = [name for name in now if name in before and before[name] != now[name]]
    if changed:
        shown = "; ".join(
            f"source {name!r} ({_where(cfg, name)}) was {before[name]} when the run started and is {now[name]} now"
            for name in changed
        )
        raise DataError(
            f"run_dir={path}: the run's data changed ({shown}): a file was added, removed or edited; restore it as "
            "it was to resume, or start a new run_dir"
        )


def _where(cfg: ExperimentConfig, name: str) -> str:
    source = next(s for s in sources_of(cfg.data) if s.name == name)
    text_dir = f", text_dir {source.data.text_dir}" if source.data.dataset == "local_text" else ""
    return f"{source.data.dataset}{text_dir}"


def _has_checkpoint(path: epath.Path) -> bool:
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def open_run_dir(cfg: ExperimentConfig) -> epath.Path:
    """Creates (or reopens) the run directory and writes the resolved config into it."""
    path = run_dir_path(cfg)
    check_same_run(cfg, saved_run(path), path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, path / "config.yaml")
        write_atomic(path / DATA_SOURCES_FILE, json.dumps(data_identity(cfg), indent=1) + "\n")
    except OSError as error:
        raise UserError(f"run_dir={path}: cannot write the run directory: {error}") from None
    return path


def keep_tokenizer(run_dir: epath.Path, tokenizer: Tokenizer) -> None:
    """Copies the run's tokenizer into the run directory, once: the run then carries what its ids
    mean, for `sample`, `data show` and `convert`, wherever the cache it came from goes."""
    if not tokenizer_in(run_dir):
        copy_tokenizer(tokenizer.path, run_dir)
