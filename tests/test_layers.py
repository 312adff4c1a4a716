"""bgrm's import graph, read from the source with ``ast`` (imports inside functions
included): no circles, no import from a lower layer up, and no private name of
another module. The layers are those of docs/architecture.md.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import bgrm

ROOT = Path(bgrm.__file__).parent

# Highest first; a module may import its own layer and those below. A name
# matches a module and, as "name.*", everything under a package.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("doors", ("bgrm.__main__", "bgrm.cli", "bgrm.command", "bgrm.models_cli",
               "bgrm.serve", "bgrm.serve.*")),
    ("planning", ("bgrm.plan", "bgrm.batch", "bgrm.progress")),
    ("library", ("bgrm", "bgrm.api")),
    ("run", ("bgrm.run", "bgrm.run.*")),
    ("media", ("bgrm.filejobs", "bgrm.image", "bgrm.video", "bgrm.video.*", "bgrm.segment",
               "bgrm.engine",
               "bgrm.edges", "bgrm.matte", "bgrm.vitmatte", "bgrm.foreground", "bgrm.models",
               "bgrm.models.installer", "bgrm.models.store")),
    ("leaves", ("bgrm.errors", "bgrm.outputs", "bgrm.inputs", "bgrm.compose", "bgrm.options",
                "bgrm.report", "bgrm.stdio", "bgrm.media", "bgrm.settings", "bgrm.version", "bgrm._forkserver",
                "bgrm.models.families", "bgrm.models.registry")),
]

# Private names another module may still use, each with its reason (none now).
PRIVATE_ALLOWED: set[tuple[str, str]] = set()


def module_files() -> dict[str, Path]:
    mods = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


MODULES = module_files()


def layer_of(module: str) -> int:
    for rank, (_, names) in enumerate(LAYERS):
        for name in names:
            if module == name or name.endswith(".*") and module.startswith(name[:-1]):
                return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def imported_from(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".")
    if MODULES[module].name != "__init__.py":
        package.pop()
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def imports(module: str) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """(bgrm modules this one imports -> a line, private names it takes -> line).

    ``from pkg import sub`` is an import of ``pkg.sub`` only; ``from pkg import name``
    one of ``pkg`` (its ``__init__``, which Python runs first anyway, is not counted
    for ``pkg.sub``)."""
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    deps: dict[str, int] = {}
    private: list[tuple[str, int]] = []
    aliases: dict[str, str] = {}  # a local name -> the bgrm module it names
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bgrm":
                    deps.setdefault(alias.name, node.lineno)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom):
            source = imported_from(module, node)
            if source.split(".")[0] != "bgrm":
                continue
            for alias in node.names:
                full = f"{source}.{alias.name}"
                if full in MODULES:
                    deps.setdefault(full, node.lineno)
                    aliases[alias.asname or alias.name] = full
                    continue
                deps.setdefault(source, node.lineno)
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    private.append((full, node.lineno))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and \
                node.value.id in aliases and node.attr.startswith("_") and \
                not node.attr.startswith("__"):
            private.append((f"{aliases[node.value.id]}.{node.attr}", node.lineno))
    deps.pop(module, None)
    return {d: line for d, line in deps.items() if d in MODULES}, private


GRAPH = {m: imports(m) for m in MODULES}


def test_every_module_is_in_a_layer():
    for module in MODULES:
        layer_of(module)


def test_no_import_runs_from_a_lower_layer_up():
    upward = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {m} ({LAYERS[layer_of(m)][0]}) "
              f"imports {d} ({LAYERS[layer_of(d)][0]})"
              for m, (deps, _) in GRAPH.items() for d, line in deps.items()
              if layer_of(d) < layer_of(m)]
    assert not upward, "\n".join(upward)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle in ``graph`` as ``[a, b, ..., a]``, or None."""
    state: dict[str, int] = {}  # 1: on the path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return path[path.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_no_import_circles():
    cycle = find_cycle({m: set(deps) for m, (deps, _) in GRAPH.items()})
    assert cycle is None, " -> ".join(cycle)


def test_the_circle_finder_finds_circles():
    # Control: an empty answer above means something.
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_module_uses_another_ones_private_names():
    used = [f"{MODULES[m].relative_to(ROOT.parent)}:{line}: {name}"
            for m, (_, private) in GRAPH.items() for name, line in private
            if not name.startswith(m + ".") and (m, name) not in PRIVATE_ALLOWED]
    assert not used, "\n".join(used)


@pytest.mark.parametrize("module", ["bgrm.run.cluster", "bgrm.api", "bgrm.edges"])
def test_the_reader_sees_imports_inside_functions(module):
    # Control: these import lazily, inside functions; the graph must see each one.
    tree = ast.parse(MODULES[module].read_text())
    lazy = {f"{imported_from(module, i)}.{a.name}" if f"{imported_from(module, i)}.{a.name}"
            in MODULES else imported_from(module, i)
            for f in ast.walk(tree) if isinstance(f, ast.FunctionDef)
            for i in ast.walk(f) if isinstance(i, ast.ImportFrom) and i.module
            and i.module.startswith("bgrm") for a in i.names}
    assert lazy
    assert lazy <= set(GRAPH[module][0])
