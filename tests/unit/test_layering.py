"""The package's import graph: no circles, and every import goes to the same layer or a
lower one, so that a module can be read (and changed) knowing only what lies below it.

Imports made only for type checking count too: a circle through them is still a circle
for a reader, and it is the first step to one at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "iceprod_server"

# lowest first; a module belongs to the layer of its longest matching prefix
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("states", "errors", "caller", "secrets_util", "log_format", "config",
                    "metrics", "requirements", "dataset_config", "examples",
                    "federation.hlc", "rpc.jsonclass", "rpc.values",
                    "httpguard")),
    ("storage", ("db", "executors", "gsiftp", "files", "live")),
    ("services", ("auth", "services")),
    ("logic", ("rpc", "federation", "scheduler", "reload")),
    ("web", ("handlers", "app", "server")),
    ("programs", ("supervisor", "cli", "client", "pilot", "__main__")),
]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The project's modules that ``name`` imports, anywhere in the file."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            targets = [f"{module}.{a.name}" for a in node.names] + [module]
        for target in targets:
            if not target.startswith("iceprod_server"):
                continue
            short = target.removeprefix("iceprod_server").lstrip(".")
            if short in known and short != name:
                found.add(short)
                break
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {name: imports(name, path, known) for name, path in mods.items()}


def layer_of(name: str) -> int:
    best, best_len = -1, -1
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best_len:
                best, best_len = index, len(prefix)
    return best


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_read_whole() -> None:
    edges = graph()
    # a reader that saw nothing would pass every check below
    assert len(edges) > 100
    assert "db.models" in edges["db.tasks"]
    assert "caller" in edges["auth"]


def test_no_module_imports_itself_back() -> None:
    assert circles(graph()) == []


def test_every_module_has_a_layer() -> None:
    assert [m for m in sorted(graph()) if m and layer_of(m) < 0] == []


def test_imports_go_only_downward() -> None:
    upward = []
    for name, targets in sorted(graph().items()):
        if not name:
            continue
        for target in sorted(targets):
            if target and layer_of(target) > layer_of(name):
                upward.append(f"{name} ({LAYERS[layer_of(name)][0]}) imports {target} "
                              f"({LAYERS[layer_of(target)][0]})")
    assert upward == []


@pytest.mark.parametrize("edges,expected", [
    ({"a": {"b"}, "b": {"a"}, "c": set()}, [["a", "b"]]),
    ({"a": {"b"}, "b": {"c"}, "c": set()}, []),
])
def test_circles_are_found(edges: dict[str, set[str]], expected: list[list[str]]) -> None:
    assert circles(edges) == expected
