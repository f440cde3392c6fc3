"""Print pip constraints pinning every runtime dependency of pyproject.toml to its floor.

Reads ``project.dependencies`` and the user-facing extras (not ``dev`` or ``bench``):
each ``name[extras]>=X`` becomes ``name==X``; ``psycopg[binary]>=X`` also pins
``psycopg-binary==X``, the package that extra installs. A requirement without a ``>=``
floor is an error: every dependency must declare the oldest version it works with.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

USER_EXTRAS = ("pg", "binary", "embedded", "citus", "test")
REQUIREMENT = re.compile(r"^([A-Za-z0-9_.-]+)(?:\[([a-z0-9_,-]+)\])?\s*>=\s*([0-9][0-9A-Za-z.]*)$")


def floors(pyproject: Path) -> dict[str, str]:
    project = tomllib.loads(pyproject.read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in USER_EXTRAS:
        requirements += project["optional-dependencies"][extra]
    pins: dict[str, str] = {}
    for requirement in requirements:
        if requirement.startswith(f"{project['name']}["):
            continue  # an extra of this project, itself listed above
        match = REQUIREMENT.match(requirement.strip())
        if match is None:
            sys.exit(f"{requirement!r} has no '>=' floor (pyproject.toml)")
        name, extras, version = match.groups()
        name = name.lower().replace("_", "-")
        if pins.get(name, version) != version:
            sys.exit(f"{name} has two floors: {pins[name]} and {version}")
        pins[name] = version
        if name == "psycopg" and extras and "binary" in extras.split(","):
            pins["psycopg-binary"] = version
    return pins


if __name__ == "__main__":
    root = Path(__file__).resolve().parents[1]
    for name, version in sorted(floors(root / "pyproject.toml").items()):
        print(f"{name}=={version}")
