"""load_experiment: the one entry point that turns an experiment name, `key=value` overrides and
gin files/params into a checked ExperimentConfig, raising ConfigError before anything is written."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from meshtrain.trainer.config.gin_front import gin_layers
from meshtrain.trainer.config.paths import (
    EXPERIMENT_DIR,
    shipped_names,
    shipped_or_path,
)
from meshtrain.trainer.config.resolve import (
    Layer,
    normalize_layer,
    override_layer,
    resolve_layers,
)
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.config.yamlio import read_yaml_mapping


def experiment_names() -> list[str]:
    """Shipped experiments (configs/experiment/*.yaml), for messages and tests."""
    return shipped_names(EXPERIMENT_DIR, ".yaml")


def experiment_path(experiment: str | None) -> Path:
    """A YAML path, or a bare name resolved in configs/experiment/ (None = default)."""
    return shipped_or_path("default" if experiment is None else experiment, EXPERIMENT_DIR, ".yaml", "experiment")


def experiment_layer(experiment: str | None) -> Layer:
    """The experiment file as a layer; without a `name:` it is named after the file's stem."""
    path = experiment_path(experiment)
    layer = normalize_layer(str(path), read_yaml_mapping(path))
    layer.setdefault("name", path.stem)
    return str(path), layer


def load_experiment(
    experiment: str | None,
    overrides: Sequence[str] | None = (),
    *,
    gin_files: Sequence[str] | None = (),
    gin_params: Sequence[str] | None = (),
) -> ExperimentConfig:
    """Resolves base.yaml -> model preset -> experiment (YAML, then gin files, gin params) ->
    `key=value` overrides into a checked ExperimentConfig.

    `experiment` is a YAML path or a name in configs/experiment/; None means default.yaml unless
    gin files are given, which then are the experiment (None for a sequence means empty, as
    argparse leaves an unused append option). Every problem is a one-line ConfigError."""
    overrides, gin_files, gin_params = overrides or (), gin_files or (), gin_params or ()
    if isinstance(overrides, str) or isinstance(gin_files, str) or isinstance(gin_params, str):
        raise TypeError("overrides, gin_files and gin_params are sequences of strings")
    use_yaml = experiment is not None or not gin_files
    layers = [experiment_layer(experiment)] if use_yaml else []
    layers += gin_layers(gin_files, gin_params, name_from_file=not use_yaml)
    layers += [override_layer(text) for text in overrides]
    return resolve_layers(layers)
