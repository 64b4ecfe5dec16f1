"""The house: what the source says about itself, read with the ast module (nothing is imported).

Imports run one way: model <- sharding <- trainer <- tools, and inside trainer from its base
modules up through config, data, step, planning, tracking, run, and then convert and launch. No
module imports a project module inside a function (the dodge that hides a cycle; optional
third-party dependencies such as torch may be imported where they are used), and no two modules
import each other.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model", "sharding", "trainer", "tools")
# (layer, rank): a module may import only from its own layer or a lower rank.
LAYERS = {
    "model": 0,
    "sharding": 1,
    "trainer": 2,  # trainer/errors.py, formatting.py: what every trainer room uses
    "trainer.storage": 2.5,  # local paths and object-store URLs: above errors.py, below every room
    "trainer.config": 3,
    "trainer.data": 4,
    "trainer.step": 5,
    "trainer.planning": 6,
    "trainer.tracking": 7,
    "trainer.run": 8,
    "trainer.convert": 9,
    "trainer.launch": 9,
    "tools": 10,
    "configs": 0,  # package data only
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _layer(module: str) -> str:
    """The layer a module (without the meshtrain. prefix) belongs to: the longest LAYERS key it is in."""
    parts = module.split(".")
    return next(".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in LAYERS)


def _project_imports(tree: ast.AST):
    """(line, imported module without the meshtrain. prefix, whether inside a function) of every
    import of a project module."""

    def walk(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name, inside
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                for alias in child.names:
                    name = f"{child.module}.{alias.name}"
                    yield child.lineno, name if name.removeprefix("meshtrain.") in MODULES else child.module, inside
            yield from walk(child, inside)

    yield from walk(tree, False)


def _graph() -> dict[str, list[tuple[int, str, bool]]]:
    graph = {}
    for module, path in MODULES.items():
        imports = []
        for line, name, inside in _project_imports(ast.parse(path.read_text())):
            if name.startswith("meshtrain."):
                imports.append((line, name.removeprefix("meshtrain."), inside))
            elif name.split(".")[0] in PACKAGES:
                imports.append((line, "<bare> " + name, inside))
        graph[module] = imports
    return graph


GRAPH = _graph()


def test_every_project_import_names_the_meshtrain_package():
    bare = [
        f"{m} line {line}: {name}"
        for m, imports in GRAPH.items()
        for line, name, _ in imports
        if name.startswith("<bare>")
    ]
    assert not bare, "import meshtrain.<package>, not a top-level name:\n" + "\n".join(bare)


def test_imports_flow_one_way_between_layers():
    upward = []
    for module, imports in GRAPH.items():
        for line, name, _ in imports:
            if name.startswith("<"):
                continue
            source, target = _layer(module), _layer(name)
            if source != target and LAYERS[target] >= LAYERS[source]:
                upward.append(f"{MODULES[module].relative_to(ROOT)}:{line}: {source} imports {name} ({target})")
    assert not upward, "imports that run against the layers:\n" + "\n".join(upward)


def test_no_imports_inside_functions():
    late = [
        f"{MODULES[m].relative_to(ROOT)}:{line}: {name}"
        for m, imports in GRAPH.items()
        for line, name, inside in imports
        if inside
    ]
    assert not late, "imports inside functions (move them to the top of the module):\n" + "\n".join(late)


def test_no_import_cycles():
    edges = collections.defaultdict(set)
    for module, imports in GRAPH.items():
        for _, name, _ in imports:
            target = name if name in MODULES else name.rsplit(".", 1)[0]
            if target in MODULES and target != module:
                edges[module].add(target)
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt) :] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(MODULES):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_files_stay_small(module):
    lines = len(MODULES[module].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[module].relative_to(ROOT)} has {lines} lines: split it by job"


def test_every_package_folder_is_installed():
    """Each folder with an __init__.py is listed in pyproject.toml's packages (else a wheel lacks it)."""
    text = (ROOT / "pyproject.toml").read_text()
    folders = {
        "meshtrain." + ".".join(p.parent.relative_to(ROOT).parts)
        for package in (*PACKAGES, "configs")
        for p in (ROOT / package).rglob("__init__.py")
    }
    missing = sorted(name for name in folders if f'"{name}"' not in text)
    assert not missing, f"packages missing from pyproject.toml [tool.setuptools] packages: {missing}"
