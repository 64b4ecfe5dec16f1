"""The gin front door: `--gin_file` / `--gin_param` bind the same dataclasses as the YAML files.

gin only parses here; it never constructs anything, and it never sees an import, a reference to
code or an include from elsewhere (trainer/config/gin_text.py refuses them first). The dataclasses are registered as gin
configurables so gin itself rejects an unknown configurable or parameter, then the parsed bindings
are read back and turned into the layers the YAML path uses, so both doors resolve through one
path (base -> preset -> gin files -> gin params) and one set of checks.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import gin

from meshtrain.trainer.config import tree
from meshtrain.trainer.config.errors_fmt import did_you_mean
from meshtrain.trainer.config.gin_text import checked_text, expanded_file
from meshtrain.trainer.config.paths import GIN_DIR, shipped_or_path
from meshtrain.trainer.config.resolve import Layer, normalize_layer
from meshtrain.trainer.errors import ConfigError

_MODULE = "meshtrain"


def Experiment(name: str, run_dir: str | None, seed: int, model: str) -> None:
    """Top-level fields for gin (`Experiment.model` is the preset name); never called, its
    signature only tells gin which parameters exist."""


# gin configurable name -> section of ExperimentConfig (None: the top level, via Experiment).
CONFIGURABLES: dict[str, str | None] = {"Experiment": None}
for _section, _cls in tree.sections().items():
    CONFIGURABLES[_cls.__name__] = _section
    gin.external_configurable(_cls, name=_cls.__name__, module=_MODULE)
gin.external_configurable(Experiment, name="Experiment", module=_MODULE)


def _parameters(configurable: str) -> list[str]:
    section = CONFIGURABLES[configurable]
    if section is None:
        return ["name", "run_dir", "seed", "model"]
    return list(tree.field_types(tree.sections()[section]))


def gin_path(name: str) -> Path:
    """A path to a .gin file, or a bare name resolved in configs/gin/."""
    return shipped_or_path(name, GIN_DIR, ".gin", "--gin_file")


def _translate_gin_error(err: Exception, source: str) -> ConfigError:
    """gin's multi-line ValueError -> one line naming the binding and the nearest valid name."""
    text = str(err)
    first, *rest = text.splitlines()
    where = " ".join(line.strip() for line in rest[:1])
    where = f" ({where})" if where else ""
    m = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", first)
    if m:
        conf = m.group(1).rsplit(".", 1)[-1]
        key = f"{conf}.{m.group(2)}"
        valid = [f"{conf}.{p}" for p in _parameters(conf)] if conf in CONFIGURABLES else []
        return ConfigError(f"unknown gin parameter {key!r} (from {source}){where}{did_you_mean(key, valid)}")
    m = re.search(r"No configurable matching '([\w.]+)'", first)
    if m:
        name = m.group(1)
        return ConfigError(
            f"unknown gin configurable {name!r} (from {source}){where}"
            f"{did_you_mean(name.rsplit('.', 1)[-1], CONFIGURABLES)}; known: "
            f"{', '.join(CONFIGURABLES)}"
        )
    return ConfigError(f"{source}: gin: {first}{where}")


def _parse(parse_fn, arg, source: str) -> None:
    try:
        parse_fn(arg)
    except SyntaxError as e:
        raise ConfigError(f"{e.filename or source}:{e.lineno}: gin syntax error: {e.msg}") from None
    except ConfigError:
        raise
    except Exception as e:  # gin reports unknown names and bad values as ValueError, TokenError...
        raise _translate_gin_error(e, source) from None


def _snapshot() -> dict:
    return {key: dict(params) for key, params in gin.config._CONFIG.items()}


def _literal(value: object, config: dict, where: str) -> object:
    """A bound value with %MACROs replaced by their values; any other @reference is refused
    (gin here only binds dataclass fields to literal values)."""
    if isinstance(value, gin.config.ConfigurableReference):
        if value.selector == "gin.macro":
            name = "/".join(value.scopes)
            if (name, "gin.macro") not in config:
                raise ConfigError(f"{where}: macro %{name} is used but never defined")
            return _literal(config[(name, "gin.macro")]["value"], config, where)
        raise ConfigError(f"{where}={value!r}: gin configs bind literal values only, not references")
    if isinstance(value, (list, tuple)):
        return type(value)(_literal(v, config, where) for v in value)
    if isinstance(value, dict):
        return {k: _literal(v, config, where) for k, v in value.items()}
    return value


def _to_layer(entries: dict, config: dict, source: str) -> dict:
    """gin's {(scope, selector): {param: value}} -> a nested layer dict like a YAML experiment's."""
    layer: dict = {}
    for (scope, selector), params in entries.items():
        if selector == "gin.macro":
            continue
        conf = selector.rsplit(".", 1)[-1]
        if scope:
            raise ConfigError(
                f"{source}: scoped binding {scope}/{conf}: experiment configs have no "
                f"scopes; bind {conf}.<field> directly"
            )
        if conf not in CONFIGURABLES or selector not in (conf, f"{_MODULE}.{conf}"):
            raise ConfigError(
                f"{source}: {selector} is not part of the experiment config; known: {', '.join(CONFIGURABLES)}"
            )
        section = CONFIGURABLES[conf]
        target = layer if section is None else layer.setdefault(section, {})
        for param, value in params.items():
            value = _literal(value, config, f"{conf}.{param}")
            if section is None and param == "model":
                layer.setdefault("model", {})["preset"] = value
            else:
                target[param] = value
    return normalize_layer(source, layer)


def gin_layers(gin_files: Sequence[str], gin_params: Sequence[str], *, name_from_file: bool = True) -> list[Layer]:
    """Parses gin files then params; returns [(files layer), (params layer)] (empty ones left out).

    Macros take their final values (gin evaluates them lazily, so a --gin_param redefining one
    changes every use). With name_from_file, an unbound Experiment.name defaults to the first
    file's stem, like a YAML experiment's. gin's global state is cleared before and after, so one
    load never leaks into the next."""
    paths = [gin_path(f) for f in gin_files]
    file_source = "gin file " + ", ".join(str(p) for p in paths)
    gin.clear_config()
    try:
        for path in paths:
            _parse(gin.parse_config, expanded_file(path), str(path))
        after_files = _snapshot()
        for param in gin_params:
            _parse(gin.parse_config, checked_text(param, f"--gin_param {param!r}"), f"--gin_param {param!r}")
        after_params = _snapshot()
    finally:
        gin.clear_config()
    changed = {}
    for key, params in after_params.items():
        before = after_files.get(key, {})
        diff = {p: v for p, v in params.items() if p not in before or before[p] is not v}
        if diff:
            changed[key] = diff
    layers = []
    if paths:
        layer = _to_layer(after_files, after_params, file_source)
        if name_from_file and "name" not in layer:
            layer["name"] = paths[0].stem
        layers.append((file_source, layer))
    if changed:
        layers.append(("--gin_param", _to_layer(changed, after_params, "--gin_param")))
    return layers
