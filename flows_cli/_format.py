"""What the commands print: tables, workflow details, history timelines, stats."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

import flows_core as flows
from flows_core.store import LimitUsage, WorkflowRecord

__all__ = [
    "format_dead_letters",
    "format_delta",
    "format_limits",
    "limits_json",
    "format_info",
    "format_stats",
    "format_table",
    "format_timeline",
    "format_workflows",
    "json_text",
    "one_line",
    "stats_json",
]


def json_text(value: Any) -> str:
    """``value`` as compact JSON text (raw JSON bytes are shown as the JSON they hold)."""
    if isinstance(value, msgspec.Raw | bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return msgspec.json.encode(value).decode()


def one_line(text: str, limit: int = 100) -> str:
    """``text`` on one line, cut to ``limit`` characters."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]], *, right: int = 0) -> str:
    """Columns as wide as their widest cell; the last column is not padded. The column
    numbered ``right`` (1-based, 0 for none) is right-aligned."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = []
    for row in [headers, *rows]:
        cells = []
        for n, (cell, width) in enumerate(zip(row, widths, strict=True), 1):
            if n == len(widths):
                cells.append(str(cell))
            elif n == right:
                cells.append(f"{cell:>{width}}")
            else:
                cells.append(f"{cell:<{width}}")
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _name(record: WorkflowRecord) -> str:
    return f"{record.name} v{record.version}"


def format_workflows(records: Sequence[WorkflowRecord]) -> str:
    """``flows list``: one row per workflow."""
    rows = [
        (
            r.workflow_id,
            _name(r),
            r.status.value,
            r.tenant_id,
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
        for r in records
    ]
    return format_table(("workflow id", "name", "status", "tenant", "created"), rows)


def format_dead_letters(records: Sequence[WorkflowRecord]) -> str:
    """``flows dead-letters``: one row per parked workflow, with its error."""
    rows = []
    for r in records:
        error = r.error or flows.ErrorInfo(type="Unknown", message="")
        attempts = str(error.attempts)
        rows.append((r.workflow_id, _name(r), attempts, r.tenant_id, one_line(str(error))))
    return format_table(("workflow id", "name", "attempts", "tenant", "error"), rows, right=3)


def format_timeline(events: Sequence[flows.Event]) -> str:
    """History as numbered lines with time offsets from the start."""
    if not events:
        return "(no events)"
    t0 = events[0].at
    lines = []
    for position, event in enumerate(events, 1):
        offset = event.at - t0
        lines.append(f"  {position:>4}  +{format_delta(offset):>9}  {flows.event_summary(event)}")
    return "\n".join(lines)


def format_delta(delta: timedelta) -> str:
    """A duration in the largest unit that keeps it short: 250ms, 12.5s, 3.0m, 2.0h."""
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_runs(runs: Sequence[flows.RunInfo]) -> str:
    """``flows runs``: one row per run of a workflow id, oldest first."""
    rows = [
        (
            str(r.run_number),
            r.status,
            r.started_at.strftime("%Y-%m-%d %H:%M:%S"),
            "" if r.ended_at is None else r.ended_at.strftime("%Y-%m-%d %H:%M:%S"),
            str(r.history_length),
        )
        for r in runs
    ]
    return format_table(("run", "status", "started", "ended", "events"), rows, right=4)


def format_info(info: flows.WorkflowInfo) -> str:
    """``flows show``: the workflow's status, output or error, and why it waits."""
    lines = [
        f"workflow  {info.workflow_id}",
        f"name      {info.name} v{info.version}",
        f"tenant    {info.tenant_id}",
        f"status    {info.status.value}",
        f"created   {info.created_at.isoformat()}",
        f"updated   {info.updated_at.isoformat()}",
    ]
    if info.output is not None:
        lines.append(f"output    {json_text(info.output)}")
    if info.error is not None:
        lines.append(f"error     {info.error}")
        if info.error.attempts:
            lines.append(f"attempts  {info.error.attempts}")
    if info.run_number != 1:
        lines.append(f"run       {info.run_number} (earlier runs: `flows runs`)")
    if info.published is not None:
        lines.append(f"progress  {one_line(bytes(info.published).decode())}")
    if info.cancel_requested:
        lines.append("cancel    requested")
    if info.waiting_reason:
        lines.append(f"waiting   {info.waiting_reason}")
    return "\n".join(lines)


def format_stats(stats: flows.StoreStats) -> str:
    """``flows stats``."""
    age = stats.oldest_pending_age
    lines = [
        f"pending       {sum(stats.queue_depth.values())}",
        f"oldest        {'-' if age is None else format_delta(age)}",
        f"in flight     {stats.in_flight}",
        f"dead letters  {stats.dead_letters}",
        "workflows     "
        + (", ".join(f"{k} {v}" for k, v in sorted(stats.workflows.items())) or "none"),
    ]
    if stats.queue_depth:
        lines.append("queue depth per shard")
        lines += [f"  {k:<40} {v}" for k, v in sorted(stats.queue_depth.items())]
    return "\n".join(lines)


def format_limits(usage: Sequence[LimitUsage], now: datetime) -> str:
    """The flow-control lines of ``flows stats`` (empty without limits in use)."""
    if not usage:
        return ""
    lines = ["limits"]
    for u in usage:
        name = f"{u.bucket} {u.limit_key}"
        if u.limit_key.startswith("r"):
            rate = "-" if u.every is None else f"1 per {format_delta(u.every)}"
            ahead = "now"
            if u.next_token_at is not None and u.next_token_at > now:
                ahead = "in " + format_delta(u.next_token_at - now)
            lines.append(f"  {name:<40} rate {rate}, next token {ahead}, reserved {u.waiting}")
        else:
            lines.append(f"  {name:<40} held {u.held}/{u.slots}, waiting {u.waiting}")
    return "\n".join(lines)


def limits_json(usage: Sequence[LimitUsage]) -> list[dict[str, Any]]:
    """The ``limits`` of ``flows stats --json``."""
    return [
        {
            "bucket": u.bucket,
            "limit_key": u.limit_key,
            "held": u.held,
            "slots": u.slots,
            "waiting": u.waiting,
            "every_seconds": None if u.every is None else u.every.total_seconds(),
            "next_token_at": None if u.next_token_at is None else u.next_token_at.isoformat(),
        }
        for u in usage
    ]


def stats_json(stats: flows.StoreStats) -> str:
    """``flows stats --json``: one JSON object."""
    age = stats.oldest_pending_age
    return json.dumps(
        {
            "queue_depth": stats.queue_depth,
            "oldest_pending_age_seconds": None if age is None else age.total_seconds(),
            "in_flight": stats.in_flight,
            "dead_letters": stats.dead_letters,
            "workflows": stats.workflows,
        }
    )
