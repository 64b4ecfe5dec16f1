"""Model presets: configs/base.yaml's model section, overlaid with configs/model/<name>.yaml."""

from __future__ import annotations

import dataclasses

import yaml

from model.config import ModelConfig
from trainer.config.paths import BASE_YAML, MODEL_PRESET_DIR
from trainer.errors import ConfigError


def preset_names() -> list[str]:
    return sorted(p.stem for p in MODEL_PRESET_DIR.glob("*.yaml"))


def preset_fields(name: str) -> dict:
    """The model fields a preset sets (base defaults not included)."""
    path = MODEL_PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"model={name!r}: no such preset; known presets: {', '.join(preset_names())}")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def model_preset(name: str, **overrides) -> ModelConfig:
    """A ModelConfig from a preset name plus field overrides (no validation beyond the fields' names)."""
    with open(BASE_YAML) as f:
        fields = dict(yaml.safe_load(f)["model"])
    fields.update(preset_fields(name))
    fields.update(overrides)
    known = {f.name for f in dataclasses.fields(ModelConfig)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ConfigError(f"unknown model field(s) {unknown}; valid: {sorted(known)}")
    return ModelConfig(**fields)
