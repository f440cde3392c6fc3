"""flows_memory.pytest_plugin: `async def` tests run with no configuration, failures are
failures, and tests that pytest-asyncio runs are left to it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

TESTS = '''
import asyncio

import pytest

async def test_runs_in_an_event_loop():
    assert asyncio.get_running_loop().is_running()

async def test_failure_is_reported():
    await asyncio.sleep(0)
    assert 1 == 2, "this async test fails"

@pytest.fixture
def number():
    return 41

async def test_sync_fixtures_are_passed(number):
    assert number + 1 == 42
'''

ASYNCIO_TESTS = '''
import pytest
import pytest_asyncio

@pytest_asyncio.fixture
async def resource():
    yield "ready"

@pytest.mark.asyncio
async def test_left_to_pytest_asyncio(resource):
    assert resource == "ready"   # an async generator if the flows plugin had run it
'''


def run_pytest(directory: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "PYTHONPATH"))}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA"],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_async_tests_run_without_configuration(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text(TESTS)
    result = run_pytest(tmp_path)
    assert "PASSED test_plain.py::test_runs_in_an_event_loop" in result.stdout, result.stdout
    assert "PASSED test_plain.py::test_sync_fixtures_are_passed" in result.stdout
    assert "FAILED test_plain.py::test_failure_is_reported" in result.stdout
    assert "this async test fails" in result.stdout
    assert "1 failed, 2 passed" in result.stdout
    assert result.returncode == 1


def test_tests_marked_for_pytest_asyncio_are_left_to_it(tmp_path: Path) -> None:
    pytest.importorskip("pytest_asyncio")
    (tmp_path / "test_marked.py").write_text(ASYNCIO_TESTS)
    result = run_pytest(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED test_marked.py::test_left_to_pytest_asyncio" in result.stdout
