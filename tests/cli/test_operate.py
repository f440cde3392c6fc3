"""`flows ui` and `flows worker --metrics-port` as real processes against PostgreSQL: the
dashboard serves the list page (and /metrics behind its token), refuses a public address
without one, and a worker's metrics endpoint is scraped during a run."""

from __future__ import annotations

import base64
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest_pg import fresh_schema

REPO = Path(__file__).resolve().parents[2]
APP = "tests.cli.app_for_tests:definitions"


def command(dsn: str | None, schema: str | None, *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "flows_cli"]
    if dsn is not None:
        cmd += ["--dsn", dsn]
    if schema is not None:
        cmd += ["--schema", schema]
    return cmd + list(args)


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLOWS_UI_", "FLOWS_DSN"))}
    env.update(extra)
    return env


def flows(dsn: str, schema: str, *args: str) -> str:
    result = subprocess.run(
        command(dsn, schema, *args),
        capture_output=True,
        text=True,
        timeout=120,
        env=environment(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Process:
    """A running `flows` command whose output lines are read as they come."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=REPO,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def line_with(self, needle: str, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None and self.lines.empty():
                    break
                continue
            self.seen.append(line)
            if needle in line:
                return line
        raise AssertionError(f"no line with {needle!r}; output so far: {''.join(self.seen)}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@contextmanager
def running(args: list[str], env: dict[str, str]) -> Iterator[Process]:
    process = Process(args, env)
    try:
        yield process
    finally:
        process.stop()


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    """Status and body of a GET (redirects not followed); retries until it connects."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    for _ in range(300):
        try:
            with opener.open(request, timeout=10) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()
        except (ConnectionError, urllib.error.URLError):
            time.sleep(0.1)
    raise AssertionError(f"nothing answered at {url}")


def test_ui_refuses_a_public_address_without_a_token() -> None:
    result = subprocess.run(
        command(None, None, "ui", "--host", "0.0.0.0", "--port", "8080"),
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(),
        cwd=REPO,
    )
    assert result.returncode == 2
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: refusing to serve the dashboard on '0.0.0.0'")
    assert "FLOWS_UI_TOKEN" in lines[0]


def test_ui_with_a_too_short_token_is_one_line() -> None:
    result = subprocess.run(
        command(None, None, "ui", "--host", "0.0.0.0"),
        capture_output=True,
        text=True,
        timeout=60,
        env=environment(FLOWS_UI_TOKEN="short"),
        cwd=REPO,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: the UI token or password of 'token' is 5 characters; use at least 8 "
        "(make one with secrets.token_urlsafe())"
    ]


@pytest.mark.pg
def test_ui_serves_the_list_page(pg_dsn: str) -> None:
    schema = fresh_schema("cliui")
    flows(pg_dsn, schema, "migrate")
    flows(pg_dsn, schema, "start", "ui-listed", "--id", "ui-wf-1", "--input", "1", "--force")
    port = free_port()
    args = command(pg_dsn, schema, "ui", "--port", str(port), "--app", APP)
    with running(args, environment()) as ui:
        ui.line_with(f"dashboard on http://127.0.0.1:{port}/")
        status, page = get(f"http://127.0.0.1:{port}/workflows")
        assert status == 200, page
        assert "ui-wf-1" in page
        assert "ui-listed" in page
        status, page = get(f"http://127.0.0.1:{port}/workflow?id=ui-wf-1")
        assert status == 200, page
        assert "ui-wf-1" in page
        status, metrics = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200
        assert "# TYPE flows_workflows_started_total counter" in metrics
        assert ui.stop() == 0  # SIGINT: a clean stop
        assert "dashboard stopped" in ui.line_with("dashboard stopped")


@pytest.mark.pg
def test_ui_with_a_token_guards_pages_and_metrics(pg_dsn: str) -> None:
    schema = fresh_schema("cliui")
    flows(pg_dsn, schema, "migrate")
    port = free_port()
    token = "a-long-enough-token"
    args = command(pg_dsn, schema, "ui", "--port", str(port), "--read-only")
    base = f"http://127.0.0.1:{port}"
    with running(args, environment(FLOWS_UI_TOKEN=token)) as ui:
        ui.line_with("dashboard on")
        status, _ = get(f"{base}/workflows")
        assert status == 303  # to the login form
        status, page = get(f"{base}/workflows", {"Authorization": f"Bearer {token}"})
        assert status == 200
        assert "Workflows" in page
        assert get(f"{base}/metrics")[0] == 401
        assert get(f"{base}/metrics", {"Authorization": "Bearer wrong-token-here"})[0] == 401
        status, metrics = get(f"{base}/metrics", {"Authorization": f"Bearer {token}"})
        assert status == 200
        assert "flows_workflows_started_total" in metrics
    basic = "ops:a-long-password"
    with running(args, environment(FLOWS_UI_BASIC_AUTH=basic)) as ui:
        ui.line_with("dashboard on")
        assert get(f"{base}/metrics")[0] == 401
        encoded = base64.b64encode(basic.encode()).decode()
        status, _ = get(f"{base}/metrics", {"Authorization": f"Basic {encoded}"})
        assert status == 200


def sample(text: str, name: str, **labels: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return 0.0


@pytest.mark.pg
def test_worker_metrics_are_scraped_during_a_run(pg_dsn: str) -> None:
    schema = fresh_schema("climetrics")
    flows(pg_dsn, schema, "migrate")
    args = command(
        pg_dsn,
        schema,
        "worker",
        "--app",
        APP,
        "--poll-interval",
        "0.1",
        "--metrics-port",
        "0",
    )
    with running(args, environment()) as worker:
        line = worker.line_with("metrics on http://127.0.0.1:")
        url = line.split()[-1]
        worker.line_with("serving cli-greeting v1")
        flows(
            pg_dsn, schema, "start", "cli-greeting", "--id", "m-1", "--app", APP,
            "--input", '{"name": "Ada"}',
        )  # fmt: skip

        def scrape() -> str:
            status, text = get(url)
            assert status == 200
            return text

        def until(condition: str, predicate: object) -> str:
            for _ in range(600):
                text = scrape()
                if callable(predicate) and predicate(text):
                    return text
                time.sleep(0.1)
            raise AssertionError(f"metrics never showed {condition}: {scrape()}")

        waiting = until(
            "the first workflow task",
            lambda t: (
                sample(
                    t, "flows_workflow_tasks_total", workflow="cli-greeting", outcome="committed"
                )
                >= 1
            ),
        )
        assert sample(waiting, "flows_workflows_completed_total", workflow="cli-greeting") == 0
        flows(
            pg_dsn, schema, "signal", "m-1", "approval", "--payload",
            '{"approved": true, "by": "Grace"}',
        )  # fmt: skip
        done = until(
            "the completion",
            lambda t: sample(t, "flows_workflows_completed_total", workflow="cli-greeting") == 1,
        )
        committed = sample(
            done, "flows_workflow_tasks_total", workflow="cli-greeting", outcome="committed"
        )
        assert committed >= 2  # the start and the resume after the signal
        assert sample(done, "flows_workflows_failed_total", workflow="cli-greeting") == 0
        assert "status    completed" in flows(pg_dsn, schema, "show", "m-1")
        assert worker.stop() == 0


def test_worker_observers_from_the_options() -> None:
    """--otel alone in this process (--metrics-port registers in prometheus_client's
    global registry: test_worker_metrics_are_scraped_during_a_run runs it as a process)."""
    from flows_cli._main import build_parser
    from flows_cli._operate import worker_observer
    from flows_observe.otel import OTelObserver

    def observer(*options: str) -> object:
        args = build_parser().parse_args(["worker", "--app", APP, *options])
        return worker_observer(args)

    assert observer() is None
    assert isinstance(observer("--otel"), OTelObserver)


def test_bad_ports_are_refused_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    from flows_cli._main import build_parser

    with pytest.raises(SystemExit):
        build_parser().parse_args(["worker", "--app", APP, "--metrics-port", "70000"])
    assert "'70000' is not a port number (0 to 65535)" in capsys.readouterr().err
