"""The run directory: the resolved config, metrics, TensorBoard events and checkpoints of one run.

A run directory is its own record: `config.yaml` alone repeats or resumes the run. Starting a run on
an existing directory resumes it, but only if it is the same run: a different model, data, seed or
optimizer would silently continue training something else, so that is refused.
"""

from __future__ import annotations

import os
from pathlib import Path

from meshtrain.trainer.config import config_differences, dump_config, load_config_file
from meshtrain.trainer.config.schema import RUN_IDENTITY_SECTIONS, ExperimentConfig
from meshtrain.trainer.errors import ConfigError, UserError


def run_dir_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run_dir or Path("runs") / cfg.name).expanduser()


def check_run_dir(path: Path) -> None:
    """Raises a one-line UserError when `path` cannot be a run directory: an existing file, or a
    place where nothing can be written (a read-only filesystem, no permission)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"run_dir={path} is an existing file, not a directory: choose another run_dir=PATH")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"run_dir={path}: {existing} is a file, so the directory cannot be created there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(
            f"run_dir={path}: {existing} is not writable (read-only filesystem or no permission): "
            "choose another run_dir=PATH"
        )


def check_same_run(cfg: ExperimentConfig, path: Path) -> None:
    """Raises when `path` holds a run whose identity (model, data, seed, optimizer) differs from `cfg`.

    A directory without a checkpoint holds nothing to resume (a start that failed, or a run killed
    before its first save): its config.yaml does not bind the next command."""
    saved_path = path / "config.yaml"
    if not saved_path.is_file() or not _has_checkpoint(path):
        return
    saved = load_config_file(saved_path)
    differences = config_differences(saved, cfg, RUN_IDENTITY_SECTIONS)
    if differences:
        shown = ", ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in differences)
        raise ConfigError(
            f"run directory {path} holds a different run ({shown}); use another run_dir=PATH or the run's own settings"
        )


def _has_checkpoint(path: Path) -> bool:
    checkpoints = path / "checkpoints"
    return checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir())


def open_run_dir(cfg: ExperimentConfig) -> Path:
    """Creates (or reopens) the run directory and writes the resolved config into it."""
    path = run_dir_path(cfg)
    check_same_run(cfg, path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, path / "config.yaml")
    except OSError as error:
        raise UserError(f"run_dir={path}: cannot write the run directory: {error}") from None
    return path
