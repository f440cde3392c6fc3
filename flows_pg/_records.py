"""Rows to records, and the small conversions the statements need."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from flows_core._errors import ErrorInfo, LeaseLost
from flows_core.store import WorkflowRecord, WorkflowStatus, WorkflowTaskCommit

__all__ = ["commit_refused", "error_text", "raw", "record_from_row", "text", "utc", "uuid_of"]

_json: Final = msgspec.json.Encoder()
_error_decoder: Final = msgspec.json.Decoder(ErrorInfo)


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def raw(text: str | None) -> msgspec.Raw | None:
    return None if text is None else msgspec.Raw(text.encode())


def text(raw: msgspec.Raw | bytes | None) -> str | None:
    return None if raw is None else bytes(raw).decode()


def error_text(error: ErrorInfo | None) -> str | None:
    return None if error is None else _json.encode(error).decode()


def uuid_of(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise LeaseLost(f"{what} {value!r} is not a lease of this store") from None


def record_from_row(row: Sequence[Any], pending: bool) -> WorkflowRecord:
    error = row[8]
    return WorkflowRecord(
        tenant_id=row[0],
        workflow_id=row[1],
        name=row[2],
        version=row[3],
        shard_key=row[4],
        status=WorkflowStatus(row[5]),
        input=msgspec.Raw(row[6].encode()),
        output=raw(row[7]),
        error=None if error is None else _error_decoder.decode(error),
        created_at=utc(row[9]),
        updated_at=utc(row[10]),
        history_length=row[11],
        next_seq=row[12],
        cancel_requested=row[13],
        workflow_task_pending=pending,
        inbox_length=row[14],
    )


def commit_refused(
    commit: WorkflowTaskCommit,
    *,
    task_found: bool,
    next_seq: int | None,
    history_length: int | None,
) -> LeaseLost:
    """Why a fenced workflow-task commit wrote nothing, from what its fence read."""
    lease = commit.lease
    if not task_found:
        return LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")
    if next_seq != commit.expected_next_seq:
        return LeaseLost(
            f"workflow {lease.workflow_id}: next step is #{next_seq}, "
            f"the commit expected #{commit.expected_next_seq}"
        )
    if history_length != commit.claimed_history_length:
        return LeaseLost(
            f"workflow {lease.workflow_id}: history has {history_length} events, "
            f"the commit was decided on {commit.claimed_history_length}"
        )
    return LeaseLost(f"task {lease.task_id} is not a workflow task")
