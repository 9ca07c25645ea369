"""House rule: rooms follow the flow capture -> tracker -> tls -> identity -> telemetry -> views, and
nothing imports upstream (a room may import the rooms before it, never those after it)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "podwire"
FLOW = ("capture", "tracker", "tls", "identity", "telemetry", "views")


def _imported_rooms(path: Path) -> set[str]:
    rooms: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if len(parts) >= 2 and parts[0] == "podwire" and parts[1] in FLOW:
                rooms.add(parts[1])
    return rooms


def test_no_room_imports_a_room_after_it_in_the_flow() -> None:
    problems = []
    for i, room in enumerate(FLOW):
        later = set(FLOW[i + 1 :])
        for path in sorted((PACKAGE / room).rglob("*.py")):
            for bad in sorted(_imported_rooms(path) & later):
                problems.append(f"{path.relative_to(PACKAGE)} imports podwire.{bad} (upstream of {room})")
    assert not problems, "\n".join(problems)


def test_sockstats_sits_beside_capture() -> None:
    """Socket stats feed the tracker like capture does: they import no room after capture."""
    later = set(FLOW[1:])
    problems = [
        f"{path.relative_to(PACKAGE)} imports podwire.{bad}"
        for path in sorted((PACKAGE / "sockstats").rglob("*.py"))
        for bad in sorted(_imported_rooms(path) & later)
    ]
    assert not problems, "\n".join(problems)
