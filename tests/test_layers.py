"""Dependencies only point down: every import between rooms follows :data:`LAYERS`,
and no module imports itself round a loop of others.

A room may import from rooms below it, never from one above (``TYPE_CHECKING`` and
function-level imports count too: an arrow is an arrow). Inside a room the same holds
between modules: the module graph has no cycle, so every module can be read, loaded and
tested after the ones it stands on. Run this file as a script to print the arrows between
rooms and the module graph's figures (``python tests/test_layers.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "guardian"

# Bottom first. Rooms on one line are peers and never import each other.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("__init__",),  # the package itself: its version
    ("core",),
    ("support",),
    ("store", "gpu"),
    ("services",),
    ("checks",),
    ("config",),
    ("engine",),
    ("recovery",),
    ("remediation",),
    ("incidents", "uptime", "journal"),
    ("api", "demo"),
    ("runtime",),
    ("cli",),
    ("__main__",),
)
LEVEL = {room: i for i, rooms in enumerate(LAYERS) for room in rooms}


def room_of(path: Path) -> str:
    rel = path.relative_to(PACKAGE)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def imported_rooms(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "guardian":  # from guardian import __version__, runtime, ...
            names = [f"guardian.{a.name}" for a in node.names]
        else:
            names = [node.module]
    else:
        return []
    rooms = []
    for name in names:
        parts = name.split(".")
        if parts[0] == "guardian" and len(parts) > 1:
            rooms.append("__init__" if parts[1] == "__version__" else parts[1])
    return rooms


def arrows() -> dict[tuple[str, str], set[str]]:
    """(from room, to room) -> the files that import across."""
    found: dict[tuple[str, str], set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        src = room_of(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            for dst in imported_rooms(node):
                if dst != src:
                    found.setdefault((src, dst), set()).add(str(path.relative_to(PACKAGE)))
    return found


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``guardian.checks.registry`` for checks/registry.py, ``guardian.checks`` for its
    ``__init__.py``."""
    parts = [package.name, *path.relative_to(package).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(node: ast.AST, here: str, is_package: bool, known: set[str]) -> list[str]:
    """The modules of ``known`` an import statement loads, by every form: ``import a.b``
    (``a.b``), ``from a import b`` (``a``, whose namespace it reads, and the submodule
    ``a.b`` when there is one), relative ones. A parent package that is not named does not
    count: Python runs it before its child whatever the child does, so that arrow is no
    loop of the code's making."""
    if isinstance(node, ast.Import):
        return [_deepest(a.name, known) for a in node.names if _deepest(a.name, known)]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = here.split(".")
        keep = len(base) - node.level + (1 if is_package else 0)
        base_name = ".".join(base[:keep] + ([node.module] if node.module else []))
    else:
        base_name = node.module or ""
    found = [base_name] if base_name in known else []
    found += [f"{base_name}.{a.name}" for a in node.names if f"{base_name}.{a.name}" in known]
    return found


def _deepest(name: str, known: set[str]) -> str:
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        if ".".join(parts[:i]) in known:
            return ".".join(parts[:i])
    return ""


def module_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Module -> the modules of the package it imports (all forms, anywhere in it)."""
    files = {module_name(p, package): p for p in sorted(package.rglob("*.py"))}
    known = set(files)
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        out = graph.setdefault(name, set())
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            out.update(m for m in imported_modules(node, name, is_package, known) if m != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's algorithm, iterative
    so a deep graph needs no recursion), each sorted: every import cycle lies in one."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            step = next(edges, None)
            if step is not None:
                if step not in index:
                    index[step] = low[step] = len(index)
                    stack.append(step)
                    on_stack.add(step)
                    work.append((step, iter(sorted(graph.get(step, ())))))
                elif step in on_stack:
                    low[node] = min(low[node], index[step])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    found.append(sorted(group))
    return sorted(found)


def test_every_room_has_a_layer() -> None:
    rooms = {room_of(p) for p in PACKAGE.rglob("*.py")}
    assert rooms <= set(LEVEL), f"rooms without a layer: {sorted(rooms - set(LEVEL))}"


def test_no_arrow_points_up_or_sideways() -> None:
    wrong = {
        f"{src} -> {dst} ({', '.join(sorted(files))})"
        for (src, dst), files in arrows().items()
        if LEVEL.get(dst, -1) >= LEVEL.get(src, len(LAYERS))
    }
    assert not wrong, "imports against the layers:\n" + "\n".join(sorted(wrong))


def test_no_module_imports_itself_round_a_loop() -> None:
    loops = cycles(module_graph())
    assert not loops, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in loops)


def _plant(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "guardian"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


@pytest.mark.parametrize(
    ("files", "loop"),
    [
        pytest.param(  # the shape guardian.checks <-> guardian.checks.registry had
            {"__init__.py": "", "checks/__init__.py": (
                "def build():\n    from guardian.checks.registry import REGISTRY\n"),
             "checks/registry.py": "from guardian.checks import disk\n",
             "checks/disk.py": ""},
            ["guardian.checks", "guardian.checks.registry"], id="package-and-its-registry"),
        pytest.param(  # the shape cli.main <-> cli.queue had: a function-level import
            {"__init__.py": "", "cli/__init__.py": "",
             "cli/main.py": "def register():\n    from guardian.cli import queue\n",
             "cli/queue.py": "def call():\n    from guardian.cli.main import api\n"},
            ["guardian.cli.main", "guardian.cli.queue"], id="function-level"),
        pytest.param(  # three modules, a relative import and one only for the type checker
            {"__init__.py": "", "a.py": "import guardian.b\n",
             "b.py": "from . import c\n",
             "c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from guardian.a import X\n"},
            ["guardian.a", "guardian.b", "guardian.c"], id="relative-and-type-checking"),
    ],
)
def test_a_planted_cycle_is_found(tmp_path: Path, files: dict[str, str], loop: list[str]) -> None:
    assert cycles(module_graph(_plant(tmp_path, files))) == [loop]


def test_a_tree_without_a_loop_has_none(tmp_path: Path) -> None:
    pkg = _plant(tmp_path, {
        "__init__.py": "", "checks/__init__.py": "from guardian.checks.base import Check\n",
        "checks/base.py": "Check = object\n", "checks/registry.py": (
            "from guardian.checks import base\nfrom guardian.checks.base import Check\n")})
    graph = module_graph(pkg)
    assert graph["guardian.checks.registry"] == {"guardian.checks", "guardian.checks.base"}
    assert cycles(graph) == []


def test_the_check_lists_arrows() -> None:
    found = arrows()
    assert ("config", "checks") in found  # the schema reads the registry
    assert ("checks", "config") not in found


if __name__ == "__main__":
    table = arrows()
    for (src, dst), files in sorted(table.items()):
        up = LEVEL.get(dst, -1) >= LEVEL.get(src, len(LAYERS))
        print(f"{src:12} -> {dst:12} {len(files):3} {'UP' if up else ''}")
    print(f"{len(table)} arrows between rooms", file=sys.stderr)
    graph = module_graph()
    upward = sum(LEVEL.get(dst, -1) >= LEVEL.get(src, len(LAYERS)) for src, dst in table)
    print(f"{upward} pointing up or sideways; {len(graph)} modules,"
          f" {sum(len(v) for v in graph.values())} arrows between modules,"
          f" {len(cycles(graph))} import cycles", file=sys.stderr)
