"""The import rules between the project's parts, checked on the source with `ast`.

The rules are data (`PARTS`, `ALLOWED_ARROWS`, `KNOWN_CYCLES` below); the checker reads every
import of every module of channel/, backend_server/ and fusefront/: module-level ones,
imports inside functions and classes, and those under `if TYPE_CHECKING:`, with relative
imports resolved against the importing module's package.

What counts as an edge. `import a.b.c` and `from a.b import c` (when `a/b/c.py` exists) are an
edge to the module `a.b.c`; `from a.b import name` (an attribute) is an edge to `a.b`. The
parent packages' `__init__` modules that Python runs on the way are not edges: every
submodule import runs them, so counting them would make any `__init__` that re-exports its
package's API a circle with its own submodules. Imports of anything outside the three
packages (the standard library, trio, ...) are ignored.

Layer rule: every edge counts, including function-local and TYPE_CHECKING ones. An
annotation naming a class of another part is a dependency on that part as much as a call is.

Circles: every edge counts here too. A function-local import or one under TYPE_CHECKING
avoids the import-time failure of a circle but not the circle itself: the modules still
cannot be understood, tested or layered apart, which is what the rule protects. Each
remaining circle must be listed in `KNOWN_CYCLES`, by its exact set of modules and the
edges that close it; the test fails on any other circle, on a module joining a listed one,
and also when a listed circle or edge disappears (then delete its row: the exception must
not outlive the circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

#: The project's packages, each scanned completely.
PACKAGES = ("channel", "backend_server", "fusefront", "harness")

#: Parts of the code, as module-name prefixes; a module belongs to the part with the longest
#: matching prefix. The channel is two layers, each a part; `channel` itself is only its
#: package `__init__`, which re-exports the public names of both.
PARTS = (
    "channel",
    "channel.protocol",
    "channel.transport",
    "backend_server",
    "fusefront",
    "harness",
)

#: The only arrows allowed between two different parts: (importer, imported). A module may
#: always import modules of its own part. Anything not listed is forbidden, in particular
#: anything out of the protocol layer, the transport layer to anything but the protocol layer,
#: the channel to fusefront/backend_server, fusefront <-> backend_server, and any project
#: module to the `channel` package's `__init__` (it re-exports for users, not for the layers).
ALLOWED_ARROWS = frozenset(
    {
        ("channel.transport", "channel.protocol"),
        ("channel", "channel.transport"),
        ("channel", "channel.protocol"),
        ("backend_server", "channel.protocol"),
        ("backend_server", "channel.transport"),
        ("fusefront", "channel.protocol"),
        ("fusefront", "channel.transport"),
        # the test and benchmark harness drives the channel, never the file system parts
        ("harness", "channel.protocol"),
        ("harness", "channel.transport"),
    }
)


@dataclass(frozen=True, slots=True)
class KnownCycle:
    """A circle tolerated for now: exactly these modules, closed by exactly these edges."""

    modules: frozenset[str]
    closed_by: frozenset[tuple[str, str]]


#: Circles that exist today, with the reason each is tolerated. Removing their `closed_by`
#: edges must leave the graph free of circles, and with them the graph's circles must be
#: exactly these module sets: a module joining a known circle is a new circle too. None today:
#: the layer split removed the last one (the handshake building the server channels).
KNOWN_CYCLES: Mapping[str, KnownCycle] = {}


@dataclass(frozen=True, slots=True)
class Edge:
    importer: str
    imported: str
    line: int
    #: "module", "function" (inside a def or class body) or "TYPE_CHECKING"
    where: str

    def __str__(self) -> str:
        return f"{self.importer} -> {self.imported} (line {self.line}, {self.where})"


def find_modules(root: Path, packages: Iterable[str] = PACKAGES) -> dict[str, Path]:
    """Every module of `packages` under `root`: dotted name -> file."""
    modules: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> Iterable[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement in `tree` with where it sits."""

    def visit(node: ast.AST, where: str) -> Iterable[tuple[ast.Import | ast.ImportFrom, str]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, where
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                yield from visit(child, "function" if where == "module" else where)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), "TYPE_CHECKING")
                for stmt in child.orelse:
                    yield from visit(ast.Module(body=[stmt], type_ignores=[]), where)
            else:
                yield from visit(child, where)

    yield from visit(tree, "module")


def _resolve_base(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    if node.level - 1 > len(package):
        raise ValueError(f"{module}: relative import beyond the top-level package")
    anchor = package[: len(package) - (node.level - 1)]
    return ".".join([*anchor, *([node.module] if node.module else [])])


def import_edges(root: Path, packages: Iterable[str] = PACKAGES) -> list[Edge]:
    """Every import between the project's modules (see the module docstring)."""
    modules = find_modules(root, packages)

    def owner(name: str) -> str | None:
        while name:
            if name in modules:
                return name
            name = name.rpartition(".")[0]
        return None

    edges: list[Edge] = []
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        is_package = path.name == "__init__.py"
        for node, where in _imports(tree):
            targets: list[str | None]
            if isinstance(node, ast.Import):
                targets = [owner(alias.name) for alias in node.names]
            else:
                base = _resolve_base(module, is_package, node)
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else owner(base)
                    for a in node.names
                ]
            for target in dict.fromkeys(targets):
                if target is not None and target != module:
                    edges.append(Edge(module, target, node.lineno, where))
    return edges


def part_of(module: str, parts: Iterable[str] = PARTS) -> str:
    matches = [p for p in parts if module == p or module.startswith(p + ".")]
    if not matches:
        raise ValueError(f"{module} belongs to no part; add its package to PARTS")
    return max(matches, key=len)


def forbidden_arrows(
    edges: Iterable[Edge],
    parts: Iterable[str] = PARTS,
    allowed: frozenset[tuple[str, str]] = ALLOWED_ARROWS,
) -> list[str]:
    parts = tuple(parts)
    bad = []
    for edge in edges:
        a, b = part_of(edge.importer, parts), part_of(edge.imported, parts)
        if a != b and (a, b) not in allowed:
            bad.append(f"{a} may not import {b}: {edge}")
    return bad


def components(edges: Iterable[Edge]) -> list[set[str]]:
    """The strongly connected components of more than one module (Tarjan): the circles."""
    graph = _graph(edges)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(component)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def cycles(edges: Iterable[Edge]) -> list[list[str]]:
    """One concrete circle per component, first module repeated at the end, for messages."""
    edges = list(edges)
    graph = _graph(edges)
    return [_one_circle(graph, component) for component in components(edges)]


def _graph(edges: Iterable[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in edges:
        graph.setdefault(edge.importer, set()).add(edge.imported)
        graph.setdefault(edge.imported, set())
    return graph


def _one_circle(graph: Mapping[str, set[str]], component: set[str]) -> list[str]:
    """A shortest circle through the component's first module, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    raise AssertionError("a strongly connected component always has a circle")


def known_edges(known: Mapping[str, KnownCycle] = KNOWN_CYCLES) -> set[tuple[str, str]]:
    return {edge for cycle in known.values() for edge in cycle.closed_by}


def circle_problems(
    edges: Sequence[Edge], known: Mapping[str, KnownCycle] = KNOWN_CYCLES
) -> list[str]:
    """Why the graph's circles are not exactly the known ones (empty if they are)."""
    problems = []
    exempt = known_edges(known)
    remaining = [e for e in edges if (e.importer, e.imported) not in exempt]
    problems += [f"import circle: {' -> '.join(c)}" for c in cycles(remaining)]
    expected = {cycle.modules for cycle in known.values()}
    for component in components(edges):
        if frozenset(component) not in expected:
            problems.append(f"circle of modules not listed in KNOWN_CYCLES: {sorted(component)}")
    present = {(e.importer, e.imported) for e in edges}
    for name, cycle in known.items():
        stale = sorted(cycle.closed_by - present)
        if stale:
            problems.append(f"KNOWN_CYCLES[{name!r}] lists edges that are gone: {stale}")
        if not any(frozenset(c) == cycle.modules for c in components(edges)):
            problems.append(f"KNOWN_CYCLES[{name!r}] is no longer a circle: delete its row")
    return problems


# -- the project ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def project_edges() -> list[Edge]:
    return import_edges(REPO)


def test_every_module_is_scanned(project_edges: list[Edge]) -> None:
    modules = find_modules(REPO)
    assert "channel.protocol.codec" in modules and "fusefront.cli.main" in modules
    importers = {edge.importer for edge in project_edges}
    # Every module with a project import shows up: a parse that silently saw nothing fails.
    assert {"channel.protocol.sides", "backend_server.backend", "fusefront.driver"} <= importers


def test_no_forbidden_arrows(project_edges: list[Edge]) -> None:
    bad = forbidden_arrows(project_edges)
    assert not bad, "imports against the layer rules:\n" + "\n".join(bad)


def test_no_import_circles_but_the_known(project_edges: list[Edge]) -> None:
    problems = circle_problems(project_edges)
    assert not problems, "\n".join(problems)


def test_a_new_circle_fails(project_edges: list[Edge]) -> None:
    elsewhere = Edge("channel.protocol.layout", "channel.protocol.ring", 1, "module")
    assert any(
        "channel.protocol.layout -> channel.protocol.ring" in p
        for p in circle_problems([*project_edges, elsewhere])
    )


def test_a_listed_circle_must_exist_and_be_exact(project_edges: list[Edge]) -> None:
    """The exception covers its circle only: a module joining it is reported, and a row
    whose circle is gone must be deleted."""
    circle = [
        Edge("channel.transport.serve", "channel.transport.shm_server", 1, "module"),
        Edge("channel.transport.shm_server", "channel.transport.serve", 1, "function"),
    ]
    known = {
        "example": KnownCycle(
            modules=frozenset({"channel.transport.serve", "channel.transport.shm_server"}),
            closed_by=frozenset({("channel.transport.shm_server", "channel.transport.serve")}),
        )
    }
    assert circle_problems([*project_edges, *circle], known) == []
    joining = Edge("channel.transport.shm_server", "channel.transport.regions", 2, "module")
    back = Edge("channel.transport.regions", "channel.transport.serve", 2, "function")
    assert any(
        "not listed" in p for p in circle_problems([*project_edges, *circle, joining, back], known)
    )
    assert any("no longer a circle" in p for p in circle_problems(project_edges, known))


def test_the_protocol_layer_imports_nothing_else(project_edges: list[Edge]) -> None:
    assert {e.importer for e in project_edges} >= {"channel.protocol.sides"}
    up = [
        str(e)
        for e in project_edges
        if part_of(e.importer) == "channel.protocol" and part_of(e.imported) != "channel.protocol"
    ]
    assert not up
    assert forbidden_arrows(
        [Edge("channel.protocol.ring", "channel.transport.doorbell", 1, "module")]
    )
    assert forbidden_arrows([Edge("channel.transport.serve", "channel", 1, "module")])


# -- the checker itself, on small trees ----------------------------------------------------


def _tree(root: Path, files: Mapping[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def test_checker_sees_every_kind_of_import(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "channel/__init__.py": "",
            "channel/a.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from channel.b import B\n",
            "channel/b.py": "def f():\n    from . import c\n",
            "channel/c.py": "import channel.d\n",
            "channel/d.py": "from .sub import e\nfrom channel import limits_attr\n",
            "channel/sub/__init__.py": "",
            "channel/sub/e.py": "from .. import a\nimport os, trio\n",
        },
    )
    edges = {(e.importer, e.imported, e.where) for e in import_edges(root, ["channel"])}
    assert edges == {
        ("channel.a", "channel.b", "TYPE_CHECKING"),
        ("channel.b", "channel.c", "function"),
        ("channel.c", "channel.d", "module"),
        ("channel.d", "channel.sub.e", "module"),
        ("channel.d", "channel", "module"),  # an attribute of the package's __init__
        ("channel.sub.e", "channel.a", "module"),
    }
    assert cycles(import_edges(root, ["channel"])) == [
        ["channel.a", "channel.b", "channel.c", "channel.d", "channel.sub.e", "channel.a"]
    ]


def test_checker_catches_forbidden_arrows(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "channel/__init__.py": "",
            "channel/x.py": "def f():\n    from fusefront import y\n",
            "fusefront/__init__.py": "",
            "fusefront/y.py": "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n    from backend_server.z import Z\nfrom channel import x\n",
            "backend_server/__init__.py": "",
            "backend_server/z.py": "from channel.x import f\n",
        },
    )
    three = ("channel", "backend_server", "fusefront")
    arrows = frozenset({("backend_server", "channel"), ("fusefront", "channel")})
    bad = forbidden_arrows(import_edges(root), three, arrows)
    assert len(bad) == 2
    assert "channel may not import fusefront: channel.x -> fusefront.y" in bad[0] + bad[1]
    assert any("fusefront may not import backend_server" in b and "TYPE_CHECKING" in b for b in bad)


def test_parts_are_matched_by_longest_prefix() -> None:
    parts = ("channel", "channel.proto", "fusefront")
    assert part_of("channel.proto.ring", parts) == "channel.proto"
    assert part_of("channel.protocol", parts) == "channel"  # a prefix of names, not of text
    with pytest.raises(ValueError):
        part_of("tests.x", parts)


def test_relative_import_beyond_the_top_is_refused(tmp_path: Path) -> None:
    root = _tree(tmp_path, {"channel/__init__.py": "", "channel/a.py": "from ... import b\n"})
    with pytest.raises(ValueError, match="beyond"):
        import_edges(root, ["channel"])
