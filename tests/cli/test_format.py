"""The CLI's output formatting: tables fit their widest cell, JSON is shown as JSON."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

import flows_core as flows
from flows_cli._format import format_dead_letters, format_table, format_workflows, json_text
from flows_core.store import WorkflowRecord


def record(workflow_id: str, **kw: object) -> WorkflowRecord:
    at = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    fields: dict[str, object] = dict(
        tenant_id="acme",
        workflow_id=workflow_id,
        name="order",
        version=2,
        shard_key="order-shard-0",
        status=flows.WorkflowStatus.RUNNING,
        input=msgspec.Raw(b"{}"),
        created_at=at,
        updated_at=at,
        history_length=1,
        next_seq=1,
    )
    fields.update(kw)
    return WorkflowRecord(**fields)  # type: ignore[arg-type]


def test_columns_fit_ids_of_any_length() -> None:
    long_id = "x" * 60
    lines = format_workflows([record("a"), record(long_id)]).splitlines()
    assert lines[0].split() == ["workflow", "id", "name", "status", "tenant", "created"]
    assert lines[1] == "a" + " " * 61 + "order v2  running  acme    2026-01-02 03:04:05"
    assert lines[2] == long_id + "  order v2  running  acme    2026-01-02 03:04:05"


def test_right_aligned_column_and_unpadded_last() -> None:
    table = format_table(("id", "n", "note"), [("a", "7", "x"), ("bbb", "1234", "")], right=2)
    assert table.splitlines() == ["id      n  note", "a       7  x", "bbb  1234"]


def test_dead_letters_show_attempts_and_one_line_errors() -> None:
    error = flows.ErrorInfo(type="ValueError", message="bad\nthing", attempts=3)
    out = format_dead_letters([record("w-1", status=flows.WorkflowStatus.PARKED, error=error)])
    assert out.splitlines()[1].split(maxsplit=5) == [
        "w-1",
        "order",
        "v2",
        "3",
        "acme",
        "ValueError: bad thing",
    ]


def test_json_text() -> None:
    assert json_text(msgspec.Raw(b'{"a": [1, "b"]}')) == '{"a": [1, "b"]}'
    assert json_text({"a": [1, "b"]}) == '{"a":[1,"b"]}'
    assert json_text("nd") == '"nd"'
