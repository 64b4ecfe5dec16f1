"""Shared wording for config errors: every message names the key, the value and the nearest choice."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def nearest(word: str, choices: Iterable[str], cutoff: float = 0.5) -> str | None:
    """The closest valid spelling, so a typo's error message can say what was meant."""
    matches = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=cutoff)
    return matches[0] if matches else None


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """'; did you mean X?' or '' when nothing is close; appended to one-line messages."""
    choices = list(choices)
    best = nearest(word, choices)
    return f"; did you mean {best!r}?" if best is not None else ""


def show(value: object) -> str:
    """A value as the user would have typed it in YAML (null, true, 'text', [1, 2])."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        value = [list(v) if isinstance(v, tuple) else v for v in value]
    return repr(value)
