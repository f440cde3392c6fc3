"""Rows (dicts keyed by column name) to records, and the small conversions the statements
need."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import msgspec

from flows_core._errors import ErrorInfo, LeaseLost
from flows_core.events import decode_events
from flows_core.store import (
    TERMINAL_STATUSES,
    ActivityTaskClaim,
    CachedHistory,
    ClaimedTask,
    Lease,
    OutboxRecord,
    StoreStats,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
    stored_error,
    stored_event,
    stored_payload,
)

__all__ = [
    "cached_params",
    "claimed_task",
    "commit_params",
    "commit_refused",
    "error_text",
    "lease_lost",
    "outbox_record",
    "raw",
    "record_from_row",
    "store_stats",
    "text",
    "utc",
    "uuid7s",
    "uuid_of",
]

_json: Final = msgspec.json.Encoder()
_error_decoder: Final = msgspec.json.Decoder(ErrorInfo)


def utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def raw(text: str | None) -> msgspec.Raw | None:
    return None if text is None else msgspec.Raw(text.encode())


def text(raw: msgspec.Raw | bytes | None, what: str = "payload") -> str | None:
    """A payload as stored (``flows_core.store.stored_payload``: PayloadError if invalid)."""
    return None if raw is None else stored_payload(raw, what)


def error_text(error: ErrorInfo | None) -> str | None:
    """An error as stored (``flows_core.store.stored_error``)."""
    return None if error is None else stored_error(error)


def uuid7s(n: int) -> list[uuid.UUID]:
    """``n`` fresh UUIDv7 for the lease tokens and task ids a statement may use: one
    clock reading and one ``os.urandom`` call for all (``uuid6.uuid7()`` costs ~10 us
    each, and claims and timer firing ask for up to their limit every call)."""
    if n <= 0:
        return []
    base = ((time.time_ns() // 1_000_000) & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76
    noise = os.urandom(10 * n)
    out = []
    for i in range(n):
        r = int.from_bytes(noise[10 * i : 10 * i + 10], "big")
        value = base | ((r >> 64) & 0xFFF) << 64 | 0x2 << 62 | (r & 0x3FFFFFFFFFFFFFFF)
        token = _new_uuid(uuid.UUID)  # uuid.UUID(int=value) without its checks: 3x faster
        _set(token, "int", value)
        _set(token, "is_safe", uuid.SafeUUID.unknown)
        out.append(token)
    return out


_new_uuid: Final = object.__new__
_set: Final = object.__setattr__


def uuid_of(value: str, what: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except (ValueError, TypeError, AttributeError):
        raise LeaseLost(f"{what} {value!r} is not a lease of this store") from None


def record_from_row(row: Mapping[str, Any]) -> WorkflowRecord:
    """A ``WorkflowRecord`` from a row with the ``RECORD`` columns (and ``pending``:
    a workflow task is claimable now; False when absent)."""
    error = row["error"]
    return WorkflowRecord(
        tenant_id=row["tenant_id"],
        workflow_id=row["workflow_id"],
        name=row["name"],
        version=row["version"],
        shard_key=row["shard_key"],
        status=WorkflowStatus(row["status"]),
        input=msgspec.Raw(row["input"].encode()),
        output=raw(row["output"]),
        error=None if error is None else _error_decoder.decode(error),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        history_length=row["history_length"],
        next_seq=row["next_seq"],
        cancel_requested=row["cancel_requested"],
        workflow_task_pending=bool(row.get("pending", False)),
        inbox_length=row["inbox_length"],
        run_number=row.get("run_number", 1),
        status_value=raw(row.get("status_value")),
    )


def cached_params(cached: Sequence[CachedHistory], shard_key: str | None = None) -> dict[str, str]:
    """The claim's ``c_*`` parameters: ``ClaimRequest.cached`` (only the entries under
    ``shard_key`` when given) as array literals, one per field. Sent as text: psycopg's
    own dumping of lists costs the client several milliseconds per thousand entries."""
    if shard_key is not None:
        cached = [c for c in cached if c.shard_key == shard_key]
    return {
        "c_tenants": _text_array([c.tenant_id for c in cached]),
        "c_ids": _text_array([c.workflow_id for c in cached]),
        "c_lengths": _int_array([c.history_length for c in cached]),
        "c_seeds": _int_array([c.seed for c in cached]),
    }


def _text_array(values: list[str]) -> str:
    """A PostgreSQL array literal of ``values``: each element quoted, ``\\`` and ``"``
    escaped (stored text has no NUL)."""
    quoted = ('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"' for v in values)
    return "{" + ",".join(quoted) + "}"


def _int_array(values: list[int]) -> str:
    return "{" + ",".join(map(str, values)) + "}"


def claimed_task(row: Mapping[str, Any]) -> ClaimedTask:
    """A claimed task from a claim's row: the ``RECORD`` columns of its workflow plus
    task_kind, task_id, lease_token, lease_expires, task_seq, task_name, task_input,
    task_attempt, scheduled_at and (workflow tasks) history."""
    lease = Lease(
        task_id=str(row["task_id"]),
        token=str(row["lease_token"]),
        tenant_id=row["tenant_id"],
        shard_key=row["shard_key"],
        workflow_id=row["workflow_id"],
        expires_at=utc(row["lease_expires"]),
    )
    if row["task_kind"] == "workflow":
        history = row["history"]
        return WorkflowTaskClaim(
            lease=lease,
            workflow=record_from_row(row),
            history=[] if history is None else decode_events(history),
            attempt=row["task_attempt"],
            history_from=row["history_from"],
        )
    scheduled = row["scheduled_at"]
    return ActivityTaskClaim(
        lease=lease,
        workflow_name=row["name"],
        seq=row["task_seq"],
        activity_name=row["task_name"],
        input=msgspec.Raw((row["task_input"] or "null").encode()),
        attempt=row["task_attempt"],
        cancel_requested=row["cancel_requested"],
        scheduled_at=None if scheduled is None else utc(scheduled),
    )


def lease_lost(lease: Lease) -> LeaseLost:
    return LeaseLost(f"task {lease.task_id} is no longer leased by this claimant")


def store_stats(
    depth: Mapping[str, int],
    oldest: timedelta | None,
    in_flight: int,
    by_status: Mapping[str, int],
) -> StoreStats:
    """``StoreStats`` from claimable tasks per shard key, the age of the oldest one, the
    leased tasks and the workflows per status."""
    return StoreStats(
        queue_depth={str(k): int(v) for k, v in depth.items()},
        oldest_pending_age=None if oldest is None else max(oldest, timedelta(0)),
        in_flight=in_flight,
        dead_letters=int(by_status.get(WorkflowStatus.PARKED.value, 0)),
        workflows={str(k): int(v) for k, v in by_status.items()},
    )


def commit_params(commit: WorkflowTaskCommit, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` (the lease's) with every parameter a commit statement may take; each
    statement uses those of the parts it has."""
    if commit.keep_lease is not None and commit.status != WorkflowStatus.RUNNING:
        raise ValueError("keep_lease is only valid with a RUNNING status")
    acts, timers = commit.activity_tasks, commit.timers
    params.update(
        claimed=commit.claimed_history_length,
        expected=commit.expected_next_seq,
        next_seq=commit.next_seq,
        events=[stored_event(e) for e in commit.events],
        n_events=len(commit.events),
        terminal=commit.status in TERMINAL_STATUSES,
        keep_lease=commit.keep_lease or timedelta(0),
        status=str(commit.status),
        output=text(commit.output, "workflow output"),
        error=error_text(commit.error),
        drop_seqs=list(commit.drop_seqs),
        a_ids=uuid7s(len(acts)),
        a_seqs=[a.seq for a in acts],
        a_names=[a.name for a in acts],
        a_inputs=[stored_payload(a.input, f"input of activity {a.name!r}") for a in acts],
        a_attempts=[a.attempt for a in acts],
        a_errors=[error_text(a.last_error) for a in acts],
        a_visible=[a.visible_at for a in acts],
        a_scheduled=[a.scheduled_at for a in acts],
        t_ids=uuid7s(len(timers)),
        t_seqs=[t.seq for t in timers],
        t_fire=[t.fire_at for t in timers],
    )
    return params


def commit_refused(commit: WorkflowTaskCommit, fence: Mapping[str, Any]) -> LeaseLost:
    """Why a fenced workflow-task commit wrote nothing, from what its fence read (a row
    with wf_found, task_found, next_seq and history_length)."""
    lease = commit.lease
    next_seq, history_length = fence["next_seq"], fence["history_length"]
    if not (fence["wf_found"] and fence["task_found"]):
        return lease_lost(lease)
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


def outbox_record(row: Mapping[str, Any]) -> OutboxRecord:
    """An ``OutboxRecord`` from a claimed outbox row."""
    return OutboxRecord(
        tenant_id=row["tenant_id"],
        workflow_id=row["workflow_id"],
        shard_key=row["shard_key"],
        message_id=str(row["message_id"]),
        body=msgspec.Raw(row["body"].encode()),
    )
