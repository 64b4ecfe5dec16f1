"""The run directory: the resolved config, metrics, TensorBoard events and checkpoints of one run.

A run directory is its own record: `config.yaml` alone repeats or resumes the run. Starting a run on
an existing directory resumes it, but only if it is the same run: a different model, data, seed or
optimizer would silently continue training something else, so that is refused.
"""

from __future__ import annotations

from pathlib import Path

from meshtrain.trainer.config import config_differences, dump_config, load_config_file
from meshtrain.trainer.config.schema import RUN_IDENTITY_SECTIONS, ExperimentConfig
from meshtrain.trainer.errors import ConfigError


def run_dir_path(cfg: ExperimentConfig) -> Path:
    return Path(cfg.run_dir or Path("runs") / cfg.name).expanduser()


def check_same_run(cfg: ExperimentConfig, path: Path) -> None:
    """Raises when `path` holds a run whose identity (model, data, seed, optimizer) differs from `cfg`."""
    saved_path = path / "config.yaml"
    if not saved_path.is_file():
        return
    saved = load_config_file(saved_path)
    differences = config_differences(saved, cfg, RUN_IDENTITY_SECTIONS)
    if differences:
        shown = ", ".join(f"{key}: {old!r} in the run, {new!r} now" for key, old, new in differences)
        raise ConfigError(
            f"run directory {path} holds a different run ({shown}); use another run_dir=PATH or the run's own settings"
        )


def open_run_dir(cfg: ExperimentConfig) -> Path:
    """Creates (or reopens) the run directory and writes the resolved config into it."""
    path = run_dir_path(cfg)
    check_same_run(cfg, path)
    path.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, path / "config.yaml")
    return path
