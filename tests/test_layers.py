"""Dependencies only point down: every import between rooms follows :data:`LAYERS`.

A room may import from rooms below it, never from one above (``TYPE_CHECKING`` and
function-level imports count too: an arrow is an arrow). Run this file as a script to
print the arrows between rooms (``python tests/test_layers.py``).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

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
