"""The shape of ExperimentConfig as data: which keys exist, what type each leaf has, and how a raw
YAML/gin value is checked against that type.

Derived from the dataclasses (never a hand-kept list), so adding a field to schema.py is enough for
every front door to accept it and for the base.yaml coverage test to demand its default.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import types
import typing

from meshtrain.trainer.config.errors_fmt import show
from meshtrain.trainer.config.schema import ExperimentConfig

# PyYAML follows YAML 1.1, which reads `1e-4` (no dot) as a string; numbers like that are accepted
# for float fields so that `model.z_loss=1e-4` on a command line means what it says.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$")

# Wording for types whose generic description would be unhelpful.
_TYPE_HINTS = {
    "train.batch_ramp": "a list of [step, batch_size] integer pairs, e.g. [[1000, 64]]",
    "train.skip_batches": "a list of [start, end] global batch numbers, e.g. [[1200, 1500]]",
    "data.mixture": "a list of sources like {dataset: python_docs, weight: 0.7} (keys: dataset, weight, "
    "name, text_dir, text_key, train_split, eval_split)",
    "data.mixture_schedule": "a list of [step, [weight, ...]] with one weight per data.mixture entry, "
    "e.g. [[1000, [0.5, 0.5]]]",
}


@functools.cache
def field_types(cls: type) -> dict[str, object]:
    """Field name -> resolved type, in declaration order (annotations are strings in schema.py)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def sections() -> dict[str, type]:
    """Top-level keys that hold a nested dataclass (model, data, ...) -> that dataclass."""
    return {k: t for k, t in field_types(ExperimentConfig).items() if dataclasses.is_dataclass(t)}


@functools.cache
def leaf_types() -> dict[str, object]:
    """Every dotted leaf key of the tree ('seed', 'train.steps', ...) -> its type, in field order."""
    out = {}
    for key, tp in field_types(ExperimentConfig).items():
        if dataclasses.is_dataclass(tp):
            out.update({f"{key}.{k}": t for k, t in field_types(tp).items()})
        else:
            out[key] = tp
    return out


def describe(key: str, tp: object) -> str:
    """What a valid value of this type looks like, in words for the error message."""
    if key in _TYPE_HINTS:
        return _TYPE_HINTS[key]
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        return " or ".join(describe(key, a) for a in inner) + " or null"
    if typing.get_origin(tp) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {describe(key, args[0])}"
        return "[" + ", ".join(describe(key, a) for a in args) + "]"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


class TypeMismatch(Exception):
    """Raised inside coerce(); the caller turns it into a ConfigError naming key and source."""


def coerce(value: object, tp: object) -> object:
    """`value` as an instance of `tp`, or TypeMismatch. Lists become tuples; ints become floats for
    float fields; nothing else is converted (no "yes" for true, no 1.0 for an integer)."""
    args = typing.get_args(tp)
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        for a in inner:
            try:
                return coerce(value, a)
            except TypeMismatch:
                pass
        raise TypeMismatch
    if typing.get_origin(tp) is tuple:
        if not isinstance(value, (list, tuple)):
            raise TypeMismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(coerce(v, args[0]) for v in value)
        if len(value) != len(args):
            raise TypeMismatch
        return tuple(coerce(v, a) for v, a in zip(value, args))
    if dataclasses.is_dataclass(tp):
        return _coerce_record(value, tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeMismatch
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeMismatch
    if tp is float:
        if isinstance(value, str) and _EXPONENT_FLOAT.match(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        raise TypeMismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeMismatch
    raise TypeError(f"meshtrain bug: no coercion for field type {tp!r}")


def _coerce_record(value: object, tp: type) -> object:
    """A mapping -> the dataclass `tp` (a list element such as a mixture source): every key one of
    its fields and of that field's type; a key left out takes the field's default, if it has one."""
    if not isinstance(value, dict):
        raise TypeMismatch
    fields = {f.name: f for f in dataclasses.fields(tp)}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        raise TypeMismatch(f"unknown key {unknown[0]!r} in {show(value)}")
    kwargs = {}
    for name, field in fields.items():
        if name in value:
            try:
                kwargs[name] = coerce(value[name], field_types(tp)[name])
            except TypeMismatch:
                raise TypeMismatch(
                    f"{name}={show(value[name])} in {show(value)} is not {describe(name, field_types(tp)[name])}"
                ) from None
        elif field.default is dataclasses.MISSING:
            raise TypeMismatch(f"{show(value)} has no {name!r}")
    return tp(**kwargs)


def mismatch_message(key: str, value: object, tp: object, source: str, detail: str = "") -> str:
    """One line: the key, the value and its type, where it came from, what was expected, and
    (for a list of records) which entry was wrong."""
    hint = ""
    if typing.get_args(tp) and str in typing.get_args(tp) or tp is str:
        if isinstance(value, (int, float, bool)):
            hint = f" (quote it to mean text: {key}='{value}')"
    detail = f" ({detail})" if detail else ""
    return f"{key}={show(value)} ({type(value).__name__}, from {source}): expected {describe(key, tp)}{hint}{detail}"
