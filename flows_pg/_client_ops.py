"""Client operations written once, as generators, for the async store and the sync client.

Each operation yields ``(statement, params)`` and receives the result rows, like
psycopg's own ``PQGen`` generators; ``PostgresStore`` drives them with an async
connection, ``SyncClient`` with a sync one. Errors raised by the statement are thrown
into the generator, which turns them into Flows errors.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import Any, Final, TypeVar

import msgspec
import uuid6
from psycopg import errors as pg_errors

from flows_core._errors import WorkflowAlreadyExists, WorkflowNotFound, WorkflowNotRunning
from flows_core.events import CancelRequested, Event, SignalReceived, encode_event
from flows_core.store import (
    TERMINAL_STATUSES,
    CancelOutcome,
    NewWorkflow,
    WorkflowRecord,
    WorkflowStatus,
)

from . import _sql
from ._listener import channel_names
from ._records import record_from_row

__all__ = ["ClientStatements", "Op", "cancel_op", "get_op", "signal_op", "start_op", "start_params"]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]
Op = Generator[tuple[str, dict[str, Any]], Rows, T]

_json: Final = msgspec.json.Encoder()


class ClientStatements:
    """The client statements of one schema, and its notification channels."""

    def __init__(self, schema: str, ident: str) -> None:
        self.schema = schema
        self.work_channel, self.workflow_channel = channel_names(schema)
        self.start = _sql.compact(_sql.START.replace("{S}", ident))
        self.start_quiet = _sql.compact(_sql.START_QUIET.replace("{S}", ident))
        self.signal = _sql.compact(_sql.SIGNAL.replace("{S}", ident))
        self.cancel = _sql.compact(_sql.CANCEL.replace("{S}", ident))
        self.get = _sql.compact(_sql.GET_WORKFLOW.replace("{S}", ident))

    def wf_key(self, tenant_id: str, workflow_id: str) -> str:
        return _json.encode((tenant_id, workflow_id)).decode()


def start_params(new: NewWorkflow) -> dict[str, Any]:
    """The parameters every start statement takes (``wf_task_id``: a new task id)."""
    return {
        "sk": new.shard_key,
        "tid": new.tenant_id,
        "wid": new.workflow_id,
        "name": new.name,
        "version": new.version,
        "input": bytes(new.input).decode(),
        "event": encode_event(new.started).decode(),
        "wf_task_id": uuid6.uuid7(),
    }


def start_op(
    st: ClientStatements, new: NewWorkflow, local_workers: Sequence[str] | None = None
) -> Op[None]:
    """Start ``new``. ``local_workers``: ids of workers the caller wakes itself; no
    NOTIFY is sent for them (None: notify)."""
    params = start_params(new)
    params.update(
        local=None if local_workers is None else list(local_workers),
        ch_work=st.work_channel,
        ch_wf=st.workflow_channel,
        wf_key=st.wf_key(new.tenant_id, new.workflow_id),
    )
    try:
        rows = yield (st.start if local_workers is None else st.start_quiet), params
    except pg_errors.UniqueViolation as exc:
        raise WorkflowAlreadyExists(new.workflow_id) from exc
    if not rows or rows[0][0] == 0:
        raise WorkflowAlreadyExists(new.workflow_id)


def _to_inbox(
    st: ClientStatements, statement: str, tenant_id: str, workflow_id: str, event: Event
) -> Op[tuple[WorkflowStatus, bool]]:
    params = {
        "tid": tenant_id,
        "wid": workflow_id,
        "event": encode_event(event).decode(),
        "wf_task_id": uuid6.uuid7(),
        "ch_work": st.work_channel,
        "ch_wf": st.workflow_channel,
        "wf_key": st.wf_key(tenant_id, workflow_id),
    }
    rows = yield statement, params
    if not rows:
        raise WorkflowNotFound(workflow_id, tenant_id)
    return WorkflowStatus(rows[0][0]), bool(rows[0][1])


def signal_op(
    st: ClientStatements, tenant_id: str, workflow_id: str, event: SignalReceived
) -> Op[None]:
    status, _ = yield from _to_inbox(st, st.signal, tenant_id, workflow_id, event)
    if status in TERMINAL_STATUSES:
        raise WorkflowNotRunning(workflow_id, status.value)


def cancel_op(
    st: ClientStatements, tenant_id: str, workflow_id: str, event: CancelRequested
) -> Op[CancelOutcome]:
    status, already = yield from _to_inbox(st, st.cancel, tenant_id, workflow_id, event)
    if status in TERMINAL_STATUSES:
        return CancelOutcome.ALREADY_FINISHED
    if already:
        return CancelOutcome.ALREADY_REQUESTED
    return CancelOutcome.REQUESTED


def get_op(st: ClientStatements, tenant_id: str, workflow_id: str) -> Op[WorkflowRecord]:
    rows = yield st.get, {"tid": tenant_id, "wid": workflow_id}
    if not rows:
        raise WorkflowNotFound(workflow_id, tenant_id)
    return record_from_row(rows[0], rows[0][15])
