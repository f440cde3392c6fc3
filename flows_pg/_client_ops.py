"""Client operations (start, signal, cancel, terminate, get) as sans-I/O generators
(``flows_pg._base.Op``), written once per variant for the async store and the sync
client. ``ClientOps`` holds what every variant shares: the parameters and the reading
of outcomes (interpreted by ``flows_core.store``'s pure functions); ``PostgresOps``
the PostgreSQL statements, one per operation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import uuid6
from psycopg import errors as pg_errors

from flows_core._errors import WorkflowAlreadyExists, WorkflowNotFound
from flows_core.events import (
    CancelRequested,
    Event,
    SignalReceived,
    WorkflowTerminatedEvent,
    encode_event,
)
from flows_core.store import (
    TERMINAL_STATUSES,
    CancelOutcome,
    NewWorkflow,
    TerminateOutcome,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
    cancel_outcome,
    eager_start_claim,
    parked_cancellation,
    signal_outcome,
    terminate_outcome,
    terminated_error,
)

from . import _sql
from ._base import WORKER_HORIZON, Op, Rows, Statements, Step
from ._records import error_text, record_from_row, utc

__all__ = ["ClientOps", "PostgresOps"]


class ClientOps(ABC):
    """The client operations of one variant on one schema."""

    def __init__(self, statements: Statements) -> None:
        self.st = statements

    def where(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        """The parameters that name one workflow (and its notifications)."""
        params = self.st.notify_params(tenant_id, workflow_id)
        params.update(tid=tenant_id, wid=workflow_id)
        return params

    def start_params(self, new: NewWorkflow) -> dict[str, Any]:
        """The parameters of a start (``wf_task_id``: a new task id)."""
        params = self.where(new.tenant_id, new.workflow_id)
        params.update(
            sk=new.shard_key,
            name=new.name,
            version=new.version,
            input=bytes(new.input).decode(),
            event=encode_event(new.started).decode(),
            wf_task_id=uuid6.uuid7(),
        )
        return params

    def event_params(self, tenant_id: str, workflow_id: str, event: Event) -> dict[str, Any]:
        """The parameters of an event put in a workflow's inbox."""
        params = self.where(tenant_id, workflow_id)
        params.update(event=encode_event(event).decode(), wf_task_id=uuid6.uuid7())
        return params

    def end_params(self, event: CancelRequested | WorkflowTerminatedEvent) -> dict[str, Any]:
        """The parameters that end a workflow now: terminate, or cancel while parked
        (``end_from``: the statuses it ends from)."""
        if isinstance(event, CancelRequested):
            ended = parked_cancellation(event)
            events: list[Event] = [event, ended]
            status, error, cancel = WorkflowStatus.CANCELLED, ended.error, True
            end_from = [WorkflowStatus.PARKED]
        else:
            events = [event]
            status, error, cancel = WorkflowStatus.TERMINATED, terminated_error(event), False
            end_from = [s for s in WorkflowStatus if s not in TERMINAL_STATUSES]
        return {
            "end_from": [str(s) for s in end_from],
            "end_events": [encode_event(e).decode() for e in events],
            "end_status": str(status),
            "end_error": error_text(error),
            "cancel": cancel,
        }

    @staticmethod
    def status_before(rows: Rows) -> WorkflowStatus | None:
        """The locked row's status as it was before the write (None: no such row)."""
        return WorkflowStatus(rows[0]["status"]) if rows else None

    @abstractmethod
    def start(self, new: NewWorkflow, own_workers: Sequence[str] | None = None) -> Op[None]:
        """Start ``new``; ``own_workers``: ids of workers the caller wakes itself (a
        variant may then spare them a notification)."""

    def leased_claim(
        self, new: NewWorkflow, params: dict[str, Any], row: dict[str, Any]
    ) -> WorkflowTaskClaim:
        """The claim an eager start returns, from its parameters and its row
        (created_at, updated_at, lease_expires)."""
        return eager_start_claim(
            new,
            task_id=str(params["wf_task_id"]),
            token=str(params["token"]),
            expires_at=utc(row["lease_expires"]),
            created_at=utc(row["created_at"]),
            updated_at=utc(row["updated_at"]),
        )

    def leased_params(self, new: NewWorkflow, owner: str, lease: timedelta) -> dict[str, Any]:
        params = self.start_params(new)
        params.update(token=uuid6.uuid7(), owner=owner, lease=lease)
        return params

    @abstractmethod
    def start_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> Op[WorkflowTaskClaim]:
        """Eager start: ``start`` with the workflow task leased to ``owner``."""

    @abstractmethod
    def signal(self, tenant_id: str, workflow_id: str, event: SignalReceived) -> Op[None]: ...

    @abstractmethod
    def cancel(
        self, tenant_id: str, workflow_id: str, event: CancelRequested
    ) -> Op[CancelOutcome]: ...

    @abstractmethod
    def terminate(
        self, tenant_id: str, workflow_id: str, event: WorkflowTerminatedEvent
    ) -> Op[TerminateOutcome]: ...

    @abstractmethod
    def get(self, tenant_id: str, workflow_id: str) -> Op[WorkflowRecord]: ...


class PostgresOps(ClientOps):
    """Each operation is one statement (``flows_pg._sql``)."""

    def start(self, new: NewWorkflow, own_workers: Sequence[str] | None = None) -> Op[None]:
        params = self.start_params(new)
        params.update(
            local=None if own_workers is None else list(own_workers), horizon=WORKER_HORIZON
        )
        statement = self.st(_sql.START if own_workers is None else _sql.START_QUIET)
        try:
            (rows,) = yield [Step(statement, params)]
        except pg_errors.UniqueViolation as exc:
            raise WorkflowAlreadyExists(new.workflow_id) from exc
        if not rows or not rows[0]["started"]:
            raise WorkflowAlreadyExists(new.workflow_id)

    def start_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> Op[WorkflowTaskClaim]:
        params = self.leased_params(new, owner, lease)
        try:
            (rows,) = yield [Step(self.st(_sql.START_LEASED), params)]
        except pg_errors.UniqueViolation as exc:
            raise WorkflowAlreadyExists(new.workflow_id) from exc
        if not rows:
            raise WorkflowAlreadyExists(new.workflow_id)
        return self.leased_claim(new, params, rows[0])

    def signal(self, tenant_id: str, workflow_id: str, event: SignalReceived) -> Op[None]:
        params = self.event_params(tenant_id, workflow_id, event)
        (rows,) = yield [Step(self.st(_sql.SIGNAL), params)]
        signal_outcome(tenant_id, workflow_id, self.status_before(rows))

    def cancel(self, tenant_id: str, workflow_id: str, event: CancelRequested) -> Op[CancelOutcome]:
        params = self.event_params(tenant_id, workflow_id, event)
        params.update(self.end_params(event))
        (rows,) = yield [Step(self.st(_sql.CANCEL), params)]
        requested = bool(rows and rows[0]["cancel_requested"])
        return cancel_outcome(tenant_id, workflow_id, self.status_before(rows), requested)

    def terminate(
        self, tenant_id: str, workflow_id: str, event: WorkflowTerminatedEvent
    ) -> Op[TerminateOutcome]:
        params = self.where(tenant_id, workflow_id)
        params.update(self.end_params(event))
        (rows,) = yield [Step(self.st(_sql.TERMINATE), params)]
        return terminate_outcome(tenant_id, workflow_id, self.status_before(rows))

    def get(self, tenant_id: str, workflow_id: str) -> Op[WorkflowRecord]:
        (rows,) = yield [Step(self.st(_sql.GET_WORKFLOW), self.where(tenant_id, workflow_id))]
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return record_from_row(rows[0])
