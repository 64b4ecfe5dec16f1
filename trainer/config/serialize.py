"""A resolved config as plain data and back: the run directory's config.yaml is written here and
read back strictly (only fields newer than the file may be absent), so resuming a run reproduces
the exact settings it started with."""

from __future__ import annotations

import os
from collections.abc import Sequence

import yaml

from meshtrain.trainer.config.resolve import (
    as_dict,
    build,
    flatten,
    normalize_layer,
    resolve_layers,
)
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.config.yamlio import read_yaml_mapping
from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.storage.atomic import write_atomic

_HEADER = (
    "# The fully resolved meshtrain config of this run (every field, no preset).\n"
    "# Given as the experiment (a YAML path) it repeats the run exactly.\n"
)


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists of scalars ([50000, 1024])."""

    def represent_list(self, data):
        flow = all(not isinstance(v, (list, dict)) for v in data)
        return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _Dumper.represent_list)


def config_to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict (tuples as lists), safe for yaml.safe_dump and json."""
    return as_dict(cfg)


def config_from_dict(data: dict, source: str = "config dict") -> ExperimentConfig:
    """The inverse of config_to_dict, with the loader's full strictness: every key must be known,
    every field present and of its type, every value in range."""
    return build(data, source=source)


def load_config_file(path: str | os.PathLike) -> ExperimentConfig:
    """A config.yaml written by dump_config (e.g. a run directory's) back as a checked config.

    Unknown keys, bad values and model presets (a resolved config lists model fields) are errors;
    a field the file lacks because it was added to meshtrain after the file was written takes its
    base.yaml default, which keeps the earlier behaviour, so runs resume across upgrades."""
    layer = normalize_layer(str(path), read_yaml_mapping(path))
    if "preset" in layer.get("model", {}):
        raise ConfigError(f"model.preset (from {path}): a resolved config lists model fields, not a preset")
    return resolve_layers([(str(path), layer)])


def dump_config(cfg: ExperimentConfig, path: str | os.PathLike) -> None:
    """Writes cfg as YAML atomically (write_atomic): a crash leaves either the old file or the
    new one, never half of one."""
    text = _HEADER + yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    write_atomic(path, text)


def config_differences(
    a: ExperimentConfig, b: ExperimentConfig, sections: Sequence[str] | None = None
) -> list[tuple[str, object, object]]:
    """(dotted key, a's value, b's value) for every leaf that differs, in field order; `sections`
    limits the comparison to keys equal to or under those names (e.g. RUN_IDENTITY_SECTIONS)."""
    if isinstance(sections, str):
        raise TypeError(f"sections={sections!r}: expected a sequence of section names")
    flat_a, flat_b = flatten(config_to_dict(a)), flatten(config_to_dict(b))
    out = []
    for key, value in flat_a.items():
        if sections is not None and not any(key == s or key.startswith(f"{s}.") for s in sections):
            continue
        if value != flat_b[key]:
            out.append((key, value, flat_b[key]))
    return out
