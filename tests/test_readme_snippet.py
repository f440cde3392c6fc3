"""The README's unit-test snippet works when copied into an empty directory outside the
repository: no pyproject, no conftest, no pytest configuration; `pytest` just runs it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def unit_test_snippet() -> str:
    """The first python block of the README's "Unit-testing workflows" section."""
    text = README.read_text()
    section = text.split("### Unit-testing workflows", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python snippet in the README's Unit-testing workflows section"
    return match.group(1)


def test_readme_snippet_runs_in_an_empty_directory(tmp_path: Path) -> None:
    snippet = unit_test_snippet()
    assert "async def test_" in snippet
    (tmp_path / "test_order.py").write_text(snippet)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_order.py"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout, result.stdout
    assert "warning" not in result.stdout.lower(), result.stdout
