"""Model presets: configs/base.yaml's model section, overlaid with configs/model/<name>.yaml."""

from __future__ import annotations

import dataclasses

from meshtrain.model.config import ModelConfig
from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.config.paths import BASE_YAML, MODEL_PRESET_DIR, shipped_names
from meshtrain.trainer.config.yamlio import read_yaml_mapping
from meshtrain.trainer.errors import ConfigError


def preset_names() -> list[str]:
    return shipped_names(MODEL_PRESET_DIR, ".yaml")


def preset_fields(name: str, source: str = "model=") -> dict:
    """The model fields a preset sets (base defaults not included); unknown names list the known."""
    path = MODEL_PRESET_DIR / f"{name}.yaml"
    if "/" in name or not path.is_file():
        known = preset_names()
        raise ConfigError(
            f"model={name!r} (from {source}): no such preset (known: {', '.join(known)}){did_you_mean(name, known)}"
        )
    return read_yaml_mapping(path)


def model_preset(name: str, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name plus field overrides (no validation beyond the fields' names;
    load_experiment is the checked path)."""
    fields = dict(read_yaml_mapping(BASE_YAML)["model"])
    fields.update(preset_fields(name))
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown}; valid: {sorted(known)}")
    return ModelConfig(**fields)
