"""Where the shipped config files live: the `meshtrain.configs` package data (configs/ in the source
tree), found through importlib.resources so an installed wheel finds its own copy."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.storage.paths import as_path, is_url

# A real directory: meshtrain installs unzipped (a wheel or an editable install), never as a zip.
CONFIG_DIR = Path(str(resources.files("meshtrain.configs")))
BASE_YAML = CONFIG_DIR / "base.yaml"
MODEL_PRESET_DIR = CONFIG_DIR / "model"
EXPERIMENT_DIR = CONFIG_DIR / "experiment"
GIN_DIR = CONFIG_DIR / "gin"


def shipped_names(directory: Path, suffix: str) -> list[str]:
    return sorted(p.stem for p in directory.glob(f"*{suffix}"))


def shipped_or_path(name: str, directory: Path, suffix: str, what: str):
    """`name` as a file path (or object-store URL), or as a bare name of a file shipped in
    `directory`; else a ConfigError listing what is shipped there."""
    if is_url(name):
        path = as_path(name, what)
        if not path.is_file():
            raise ConfigError(f"{what} {name!r}: no such file")
        return path
    path = Path(name).expanduser()
    if not path.is_file() and path.suffix != suffix and "/" not in name:
        path = directory / f"{name}{suffix}"
    if not path.is_file():
        known = shipped_names(directory, suffix)
        raise ConfigError(
            f"{what} {name!r}: no such file {path} (shipped in {directory}: "
            f"{', '.join(known)}){did_you_mean(Path(name).stem, known)}"
        )
    return path
