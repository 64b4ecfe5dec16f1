"""gin text read as configuration only: statements are checked before gin itself sees them.

gin's `import x` statement imports (and so runs) module x while the file is parsed, `include` reads
any file, and `@fn()` binds the result of calling code. A meshtrain gin file only binds fields of
the experiment dataclasses to literal values, so each file (and each --gin_param) is first parsed
with gin's own parser, which builds statements without acting on them, and refused with one line
naming the file and line if it holds an import, a reference to a configurable, or an include of a
file outside the including file's folder and configs/. Allowed includes are expanded here, in
place, so gin never resolves a path itself.
"""

from __future__ import annotations

from pathlib import Path

from gin import config_parser

from meshtrain.trainer.config.paths import CONFIG_DIR
from meshtrain.trainer.errors import ConfigError


class _Refusal(Exception):
    pass


class _Delegate(config_parser.ParserDelegate):
    """Builds inert markers for `@name` and `%name`; a reference is refused where it is bound."""

    def configurable_reference(self, scoped_configurable_name, evaluate):
        call = "()" if evaluate else ""
        raise _Refusal(f"@{scoped_configurable_name}{call}: gin configs bind literal values only, not references")

    def macro(self, macro_name):
        return _Macro(macro_name)


class _Macro:
    """A `%name` in a value: harmless (gin's own parse later resolves it to the bound literal)."""

    def __init__(self, name: str):
        self.name = name


def _statements(text: str, source: str):
    parser = config_parser.ConfigParser(text, _Delegate())
    while True:
        try:
            statement = parser.parse_statement()
        except _Refusal as refusal:
            first = str(refusal).splitlines()[0]  # gin appends its location lines to the message
            raise ConfigError(f"{source}: {first}; nothing was run") from None
        except SyntaxError:
            return  # gin reports syntax errors itself, with its own location
        if statement is None:
            return
        yield statement


def _where(source: str, statement) -> str:
    return f"{source}:{statement.location.line_num}"


def checked_text(text: str, source: str) -> str:
    """`text` (a --gin_param) if it holds bindings only; else a ConfigError."""
    for statement in _statements(text, source):
        if not isinstance(statement, config_parser.BindingStatement):
            raise ConfigError(f"{source}: only bindings are allowed in --gin_param, not {_describe(statement)}")
    return text


def _describe(statement) -> str:
    if isinstance(statement, config_parser.ImportStatement):
        return f"`import {statement.module}`"
    return f"`include {statement.filename!r}`"


def expanded_file(path: Path, _seen: tuple[Path, ...] = ()) -> str:
    """The text of gin file `path` with its includes expanded in place, after checking every
    statement of it and of what it includes (see the module doc)."""
    path = path.resolve()
    if path in _seen:
        raise ConfigError(f"gin file {path} includes itself (through {' -> '.join(map(str, _seen))})")
    source = str(path)
    lines = path.read_text().splitlines(keepends=True)
    includes: dict[int, str] = {}
    for statement in _statements("".join(lines), source):
        if isinstance(statement, config_parser.ImportStatement):
            raise ConfigError(
                f"{_where(source, statement)}: {_describe(statement)}: gin files are configuration and may not "
                "import modules (meshtrain's configurables are always there); remove the line; nothing was run"
            )
        if isinstance(statement, config_parser.IncludeStatement):
            target = (path.parent / Path(statement.filename).expanduser()).resolve()
            roots = (path.parent, CONFIG_DIR.resolve())
            if not any(target.is_relative_to(root) for root in roots):
                raise ConfigError(
                    f"{_where(source, statement)}: {_describe(statement)}: includes must name a file in "
                    f"{path.parent} or {CONFIG_DIR}, not {target}"
                )
            if not target.is_file():
                raise ConfigError(f"{_where(source, statement)}: {_describe(statement)}: no such file {target}")
            includes[statement.location.line_num] = expanded_file(target, (*_seen, path))
    return "".join(includes.get(number, line) for number, line in enumerate(lines, start=1))
