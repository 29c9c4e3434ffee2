"""The package layering, read from the source with `ast`: no import cycles among auth/, transports/
and server/, and the dependencies point one way (server -> transports -> auth, never back).

Every import counts, including those under `if TYPE_CHECKING:` and inside functions: a cycle
closed by a type-only or a late import is still a cycle, just one that is hidden."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("auth", "transports", "server")
# Which of our packages each package may import from.
ALLOWED = {"auth": {"auth"}, "transports": {"transports", "auth"}, "server": {"server", "transports", "auth"}}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def local_modules() -> dict[str, Path]:
    return {module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def imported(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The local modules that `module`'s source imports (submodules named in `from x import y`
    count as the submodule)."""
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            # `import auth.models` names auth.models; a name we do not know may be an attribute of
            # a known module (`from auth.http import parse_json` is auth.http).
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = local_modules()
    known = set(modules)
    return {name: imported(ast.parse(path.read_text(), str(path)), name, path.name == "__init__.py", known)
            for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    colour = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = GREY
        stack.append(node)
        for target in sorted(graph[node]):
            if colour[target] == GREY:
                return [*stack[stack.index(target):], target]
            if colour[target] == WHITE and (cycle := visit(target)) is not None:
                return cycle
        stack.pop()
        colour[node] = BLACK
        return None

    for node in sorted(graph):
        if colour[node] == WHITE and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_graph_is_read() -> None:
    """The graph is not trivially empty (a broken reader would pass the checks below)."""
    graph = import_graph()
    assert "auth.server" in graph["auth.rfc7591"]
    assert "auth.models" in graph["server.principals"]
    assert "auth.cimd" in graph["auth.clientauth"]  # `from auth import cimd`


def test_no_import_cycles() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


@pytest.mark.parametrize("package", PACKAGES)
def test_layers_point_one_way(package: str) -> None:
    wrong = sorted(f"{module} imports {target}" for module, targets in import_graph().items()
                   if module.split(".")[0] == package
                   for target in targets if target.split(".")[0] not in ALLOWED[package])
    assert not wrong, f"{package}/ may import only from {sorted(ALLOWED[package])}: " + "; ".join(wrong)


def test_the_checks_catch_a_cycle_and_a_wrong_layer() -> None:
    """The cycle finder sees a cycle closed through three modules, as the one auth.cimd,
    auth.rfc7591 and auth.server formed."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from auth.cimd import X\n")
    assert imported(tree, "auth.server", False, {"auth.cimd", "auth.server"}) == {"auth.cimd"}


def test_no_assert_as_a_runtime_check() -> None:
    """`python -O` strips asserts: a check the code relies on must raise a real exception."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in local_modules().values()
             for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Assert)]
    assert not found, "assert used as a runtime check at " + ", ".join(found)
