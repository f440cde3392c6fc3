"""Rows to records, and the small conversions the statements need."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from flows_core._errors import ErrorInfo, LeaseLost
from flows_core._store import WorkflowRecord, WorkflowStatus

__all__ = ["error_text", "raw", "record_from_row", "text", "utc", "uuid_of"]

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
