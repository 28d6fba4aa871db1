"""The package's import graph, read from the source with ``ast``: no cycles, no upward imports.

Every ``import`` / ``from ... import`` statement in ``llama_index_deepmemory/`` counts, at module
level or inside a function (a lazy import is still a dependency); only imports under
``if TYPE_CHECKING:`` are left out, since they never run (annotations only). ``from pkg import name``
is an edge to ``pkg.name`` when that is a module of the package, else to ``pkg``. Importing a
submodule also runs its parents' ``__init__``; that implicit edge is not counted.

Upward (see the room table in /work/shared/ARCHITECTURE.md): ``engine/*`` must not import
``deep_memory/*``, ``chat/*`` or the faces and the command (``store``, ``wrapped_store``,
``langchain``, ``cli``); ``deep_memory/*`` must not import ``chat/*`` or those faces.

:data:`KNOWN` lists the edges others are removing right now; each is an ``xfail(strict=False)``
case that XPASSes once its edge is gone (then delete the entry). Everything else must hold now.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path


PACKAGE = "llama_index_deepmemory"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE
FACES = ("store", "wrapped_store", "langchain", "cli", "cli_common", "cli_models", "train_sources")
# (room prefix, the modules it must not import: exact names or name prefixes ending in ".")
UPWARD_RULES = (
    ("engine.", ("deep_memory.", "chat.", *FACES)),
    ("deep_memory.", ("chat.", *FACES)),
)
# (importer, imported, why it is still there): exceptions still to remove (none left)
KNOWN: tuple[tuple[str, str, str], ...] = ()


def _short(module: str) -> str:
    return module[len(PACKAGE) + 1:] if module.startswith(PACKAGE + ".") else module


def _modules() -> dict[str, Path]:
    """Dotted name (without the package prefix) -> file, for every module of the package."""
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PACKAGE, *parts])] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement of ``tree`` except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@functools.lru_cache(maxsize=1)
def import_graph() -> dict[str, frozenset[str]]:
    """Module -> the package modules it imports (short names, e.g. ``data.questions``); read once."""
    modules = _modules()
    graph: dict[str, frozenset[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
                continue
            base = node.module or ""
            if node.level:  # relative: from . / .. import
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base)
        graph[_short(name)] = frozenset(_short(t) for t in targets if t in modules and t != name)
    return graph


def _edges(graph: dict[str, frozenset[str]] | dict[str, set[str]]) -> set[tuple[str, str]]:
    return {(a, b) for a, targets in graph.items() for b in targets}


def _cycles(graph: dict[str, frozenset[str]] | dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                connect(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def _upward(importer: str, imported: str) -> bool:
    for room, forbidden in UPWARD_RULES:
        if importer.startswith(room) and any(
            imported.startswith(f) if f.endswith(".") else imported == f for f in forbidden
        ):
            return True
    return False


def _without_known(graph: dict[str, frozenset[str]]) -> dict[str, set[str]]:
    known = {(a, b) for a, b, _ in KNOWN}
    return {a: {b for b in targets if (a, b) not in known} for a, targets in graph.items()}


def test_no_import_cycles() -> None:
    cycles = _cycles(_without_known(import_graph()))
    assert not cycles, f"import cycles among package modules (besides the KNOWN edges): {cycles}"


def test_no_upward_imports() -> None:
    upward = sorted(edge for edge in _edges(_without_known(import_graph())) if _upward(*edge))
    assert not upward, f"upward imports (see UPWARD_RULES; besides the KNOWN edges): {upward}"


def test_known_violations_are_still_there() -> None:
    """Every KNOWN exception still exists (delete an entry once its import is gone)."""
    graph = import_graph()
    gone = [(a, b) for a, b, _ in KNOWN if b not in graph.get(a, set())]
    assert not gone, f"KNOWN lists imports that are gone; delete them from KNOWN: {gone}"


def test_the_checker_sees_what_it_must() -> None:
    """The graph reader itself: lazy imports count, TYPE_CHECKING ones do not, cycles are found."""
    graph = import_graph()
    assert "data.html.crawl" in graph["data.html.loader"]  # a module-level import
    assert "data.datasets" in graph["data.questions"]
    assert "data.qa_dataset" in graph["data.datasets"]  # lazy (inside a method), and under TYPE_CHECKING
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import a\nelse:\n    import b\n"
                     "def f():\n    import c\n")
    assert [getattr(node, "module", None) or node.names[0].name for node in _imports(tree)] == ["typing", "b", "c"]
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _upward("engine.faiss_store", "deep_memory.ranking") and _upward("deep_memory.api", "store")
    assert not _upward("deep_memory.api", "storage") and not _upward("store", "engine.wrapped")
