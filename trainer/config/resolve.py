"""Layered resolution: base.yaml -> model preset -> experiment layers -> overrides -> typed config.

Every front door (YAML experiment, `key=value`, gin files, gin params, a saved config.yaml) ends in
the functions here, so a value means the same thing and is checked the same way whichever door it
came through. A layer is a partial nested dict shaped like ExperimentConfig, except that its
`model` mapping may hold `preset:` (a preset name string is shorthand for {preset: name}).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping, Sequence

from meshtrain.trainer.config import checks, tree
from meshtrain.trainer.config.errors_fmt import nearest, show
from meshtrain.trainer.config.paths import BASE_YAML
from meshtrain.trainer.config.presets import preset_fields
from meshtrain.trainer.config.schema import ExperimentConfig
from meshtrain.trainer.config.yamlio import parse_yaml, read_yaml_mapping
from meshtrain.trainer.errors import ConfigError

Layer = tuple[str, dict]  # (where it came from, for messages; partial nested dict)

BASE_SOURCE = "configs/base.yaml"


def _unknown_key(path: str, value: object, source: str) -> ConfigError:
    """Unknown key: name it, its value and origin, and the nearest valid dotted key."""
    section = path.split(".", 1)[0]
    if "." in path and section in tree.sections():
        listed = [f"{section}.{k}" for k in tree.field_types(tree.sections()[section])]
    else:
        listed = list(tree.field_types(ExperimentConfig))
    best = _nearest_key(path)
    hint = f"; did you mean {best!r}?" if best else f"; valid keys: {', '.join(listed)}"
    return ConfigError(f"unknown key {path!r} (value {show(value)}, from {source}){hint}")


def _nearest_key(path: str) -> str | None:
    """Within the named section: an abbreviation by initials or prefix (`optimizer.lr` ->
    optimizer.learning_rate), then spelling; then spelling of the whole key (`trian.steps`); then
    the same field name in some section (`steps` -> train.steps)."""
    section, _, leaf = path.rpartition(".")
    if section in tree.sections():
        names = list(tree.field_types(tree.sections()[section])) + (["preset"] if section == "model" else [])
        for name in names:
            if leaf and ("".join(w[:1] for w in name.split("_")) == leaf or name.startswith(leaf)):
                return f"{section}.{name}"
        best = nearest(leaf, names, cutoff=0.6)
        if best:
            return f"{section}.{best}"
    best = nearest(path, list(tree.field_types(ExperimentConfig)) + list(tree.leaf_types()), cutoff=0.75)
    if best:
        return best
    owners = [k for k in tree.leaf_types() if k.rsplit(".", 1)[-1] == leaf]
    return owners[0] if owners else None


def normalize_layer(source: str, data: object) -> dict:
    """Checks every key of a layer against the schema and returns it with `model` as a mapping.

    Unknown keys fail here, before any merging, so the message can name the file or override."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of config keys, got {show(data)}")
    top = tree.field_types(ExperimentConfig)
    out = {}
    for key, value in data.items():
        if key not in top:
            raise _unknown_key(str(key), value, source)
        if key == "model" and isinstance(value, str):
            value = {"preset": value}
        if key in tree.sections():
            if not isinstance(value, Mapping):
                want = "a preset name or a mapping of model fields" if key == "model" else f"a mapping of {key} fields"
                raise ConfigError(f"{key}={show(value)} (from {source}): expected {want}")
            fields = tree.field_types(tree.sections()[key])
            allowed = list(fields) + (["preset"] if key == "model" else [])
            for sub, sub_value in value.items():
                if sub not in allowed:
                    raise _unknown_key(f"{key}.{sub}", sub_value, source)
            value = dict(value)
        out[key] = value
    return out


def override_layer(text: str) -> Layer:
    """`a.b=value` -> a one-key layer; the value is read as YAML (`null`, `10`, `[[10, 32]]`)."""
    source = f"override {text!r}"
    if "=" not in text:
        raise ConfigError(f"override {text!r} has no '=': write key=value with a dotted key, e.g. train.steps=100")
    key, raw = (s.strip() for s in text.split("=", 1))
    parts = key.split(".")
    if not key or not all(p.isidentifier() for p in parts):
        raise ConfigError(f"override {text!r}: {key!r} is not a dotted key like train.steps")
    value = parse_yaml(raw, source) if raw else None
    # A key deeper than section.field (`train.steps.x`, `seed.x`) names nothing.
    if len(parts) > 2 or (len(parts) == 2 and parts[0] not in tree.sections()):
        raise _unknown_key(key, value, source)
    for part in reversed(parts):
        value = {part: value}
    return source, normalize_layer(source, value)


def read_base() -> tuple[dict, dict[str, str]]:
    """base.yaml as a complete tree plus the source of each leaf; it must set every field exactly."""
    base = normalize_layer(BASE_SOURCE, read_yaml_mapping(BASE_YAML))
    base.get("model", {}).pop("preset", None)
    have = set(flatten(base))
    missing = [k for k in tree.leaf_types() if k not in have]
    if missing:
        raise ConfigError(
            f"{BASE_SOURCE} has no default for {', '.join(missing)}: every field of "
            f"the config needs one there (with a line of doc)"
        )
    return base, {k: BASE_SOURCE for k in have}


def flatten(tree_: Mapping, prefix: str = "") -> dict[str, object]:
    """{'train': {'steps': 1}} -> {'train.steps': 1}; sections are recursed, leaves kept as is."""
    out = {}
    for key, value in tree_.items():
        path = f"{prefix}{key}"
        if not prefix and key in tree.sections() and isinstance(value, Mapping):
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def resolve_layers(layers: Sequence[Layer]) -> ExperimentConfig:
    """base -> preset (the last layer naming one wins) -> each layer's fields in order -> typed, checked."""
    merged, sources = read_base()
    preset, preset_source = None, None
    for source, layer in layers:
        if "preset" in layer.get("model", {}):
            preset, preset_source = layer["model"]["preset"], source
    if preset is not None:
        if not isinstance(preset, str):
            raise ConfigError(f"model.preset={show(preset)} (from {preset_source}): expected a preset name string")
        where = f"configs/model/{preset}.yaml"
        fields = normalize_layer(where, {"model": preset_fields(preset, preset_source)})
        fields["model"].pop("preset", None)
        _merge(merged, sources, where, fields)
    set_by = {}  # dotted key -> index of the last layer that set it
    for index, (source, layer) in enumerate(layers):
        layer = copy.deepcopy(layer)
        layer.get("model", {}).pop("preset", None)
        _merge(merged, sources, source, layer)
        set_by.update(dict.fromkeys(flatten(layer), index))
    _latest_data_wins(merged, sources, set_by)
    return build(merged, sources)


def _latest_data_wins(merged: dict, sources: dict[str, str], set_by: dict[str, int]) -> None:
    """data.dataset and data.mixture both say what to train on: the one a later layer set wins, so
    `data.dataset=c4` on the command line trains on c4 even though the default experiment declares a
    mixture (within one layer, as in a saved config.yaml, the mixture wins)."""
    if set_by.get("data.dataset", -1) > set_by.get("data.mixture", -1) and merged["data"].get("mixture"):
        merged["data"]["mixture"] = []
        sources["data.mixture"] = f"cleared by data.dataset ({sources.get('data.dataset')})"


def _merge(merged: dict, sources: dict[str, str], source: str, layer: Mapping) -> None:
    for key, value in flatten(layer).items():
        section, _, field = key.partition(".")
        if field:
            merged[section][field] = value
        else:
            merged[key] = value
        sources[key] = source


def build(data: Mapping, sources: Mapping[str, str] | None = None, source: str = "config") -> ExperimentConfig:
    """A complete nested dict -> ExperimentConfig: every key known, every field present and of its
    type, every value in range. `sources` maps dotted keys to where they were set, for messages."""
    sources = dict(sources or {})
    data = normalize_layer(source, data)
    if "preset" in data.get("model", {}):
        raise ConfigError(f"model.preset (from {source}): a resolved config lists model fields, not a preset")
    flat = flatten(data)
    missing = [k for k in tree.leaf_types() if k not in flat]
    if missing:
        raise ConfigError(f"{source} is missing {', '.join(missing)}: a resolved config must set every field")
    values, problems = {}, []
    for key, tp in tree.leaf_types().items():
        try:
            values[key] = tree.coerce(flat[key], tp)
        except tree.TypeMismatch as mismatch:
            problems.append(tree.mismatch_message(key, flat[key], tp, sources.get(key, source), str(mismatch)))
    if problems:
        raise ConfigError("; ".join(problems))
    kwargs = {}
    for key, tp in tree.field_types(ExperimentConfig).items():
        if key in tree.sections():
            kwargs[key] = tp(**{f: values[f"{key}.{f}"] for f in tree.field_types(tp)})
        else:
            kwargs[key] = values[key]
    cfg = ExperimentConfig(**kwargs)
    return checks.check_config(cfg, sources)


def as_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict with tuples as lists (what YAML can hold)."""

    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))
