"""Reading config YAML safely and strictly: a syntax error or a repeated key names file and line.

PyYAML's safe loader silently keeps the last of two equal keys; in a config that hides a mistake
(the first `steps:` looks set but is not), so this loader refuses duplicates.
"""

from __future__ import annotations

import os

import yaml

from meshtrain.trainer.errors import ConfigError
from meshtrain.trainer.storage.paths import as_path


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a mapping with the same key twice."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                mark = key_node.start_mark
                raise ConfigError(f"{mark.name}:{mark.line + 1}: key {key!r} appears twice in one mapping; keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_yaml(text: str, name: str) -> object:
    """YAML text -> Python data, or ConfigError '<name>:<line>:<col>: YAML syntax error: ...'."""
    try:
        return yaml.load(text, Loader=_make_loader(name))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{name}:{mark.line + 1}:{mark.column + 1}" if mark else name
        problem = getattr(e, "problem", None) or str(e).replace("\n", " ")
        raise ConfigError(f"{where}: YAML syntax error: {problem}") from None


def _make_loader(name: str):
    """A loader whose marks carry `name`, so duplicate-key errors name the file."""

    def make(stream):
        loader = _StrictLoader(stream)
        loader.name = name
        return loader

    return make


def read_yaml_mapping(path: str | os.PathLike) -> dict:
    """A YAML file (local or on an object store) whose top level is a mapping (an empty file is
    {}); anything else is ConfigError."""
    path = as_path(path, "config file")
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror}") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys at the top level, got {type(data).__name__}")
    return data
