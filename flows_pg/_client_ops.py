"""Client operations (start, signal, cancel, terminate, retry, get) as sans-I/O generators
(``flows_pg._base.Op``), written once per variant for the async store and the sync
client. ``ClientOps`` holds what every variant shares: the parameters and the reading
of outcomes (interpreted by ``flows_core.store``'s pure functions); ``PostgresOps``
the PostgreSQL statements, one per operation."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import uuid6
from psycopg import errors as pg_errors

from flows_core._errors import WorkflowAlreadyExists, WorkflowNotFound
from flows_core.events import (
    CancelRequested,
    Event,
    SignalReceived,
    WorkflowTerminatedEvent,
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
    stored_event,
    stored_payload,
    stored_text,
    terminate_outcome,
    terminated_error,
)

from . import _sql, _sql_children, _sql_limits
from ._base import WORKER_HORIZON, Batch, Op, Rows, Statements, Step
from ._records import error_text, record_from_row, utc

__all__ = ["ClientOps", "PostgresOps"]


class ClientOps(ABC):
    """The client operations of one variant on one schema."""

    def __init__(self, statements: Statements) -> None:
        self.st = statements

    def where(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        """The parameters that name one workflow (and its notifications)."""
        return self.st.workflow_params(tenant_id, workflow_id)

    def start_params(self, new: NewWorkflow) -> dict[str, Any]:
        """The parameters of a start (``wf_task_id``: a new task id)."""
        params = self.where(new.tenant_id, new.workflow_id)
        params.update(
            sk=new.shard_key,
            name=new.name,
            version=new.version,
            input=stored_payload(new.input, f"input of workflow {new.name!r}"),
            event=stored_event(new.started),
            wf_task_id=uuid6.uuid7(),
        )
        return params

    def event_params(self, tenant_id: str, workflow_id: str, event: Event) -> dict[str, Any]:
        """The parameters of an event put in a workflow's inbox."""
        params = self.where(tenant_id, workflow_id)
        params.update(event=stored_event(event), wf_task_id=uuid6.uuid7())
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
            "end_events": [stored_event(e) for e in events],
            "end_status": str(status),
            "end_error": error_text(error),
            "cancel": cancel,
        }

    # -- the operations (the variant supplies each one's batch) --

    def start(self, new: NewWorkflow, own_workers: Sequence[str] | None = None) -> Op[None]:
        """Start ``new``; ``own_workers``: ids of workers the caller wakes itself (a
        variant may then spare them a notification)."""
        params = self.start_params(new)
        batch = self.start_batch(params, own_workers)
        if new.claim_ahead > timedelta(0):
            params["visible_at"] = datetime.now(UTC) - new.claim_ahead
            batch = [*batch, Step(self.st(_sql_limits.START_AHEAD), params)]
        yield from self._start(new, batch)

    def start_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> Op[WorkflowTaskClaim]:
        """Eager start: ``start`` with the workflow task leased to ``owner``."""
        params = self.start_params(new)
        params.update(token=uuid6.uuid7(), owner=owner, lease=lease)
        results = yield from self._start(new, self.start_leased_batch(params))
        row = {k: v for rows in results if rows for k, v in rows[0].items()}
        return eager_start_claim(
            new,
            task_id=str(params["wf_task_id"]),
            token=str(params["token"]),
            expires_at=utc(row["lease_expires"]),
            created_at=utc(row["created_at"]),
            updated_at=utc(row["updated_at"]),
        )

    def signal(self, tenant_id: str, workflow_id: str, event: SignalReceived) -> Op[None]:
        params = self.event_params(tenant_id, workflow_id, event)
        (before, *_) = yield self.signal_batch(params)
        signal_outcome(tenant_id, workflow_id, _status(before))

    def cancel(self, tenant_id: str, workflow_id: str, event: CancelRequested) -> Op[CancelOutcome]:
        params = self.event_params(tenant_id, workflow_id, event)
        params.update(self.end_params(event))
        (before, *_) = yield self.cancel_batch(params)
        requested = bool(before and before[0]["cancel_requested"])
        return cancel_outcome(tenant_id, workflow_id, _status(before), requested)

    def terminate(
        self, tenant_id: str, workflow_id: str, event: WorkflowTerminatedEvent
    ) -> Op[TerminateOutcome]:
        params = self.where(tenant_id, workflow_id)
        params.update(self.end_params(event))
        (before, *_) = yield self.terminate_batch(params)
        return terminate_outcome(tenant_id, workflow_id, _status(before))

    def retry(self, tenant_id: str, workflow_id: str) -> Op[bool]:
        """A parked workflow back to running (``Store.retry_workflow``): True if it was
        parked."""
        params = self.where(tenant_id, workflow_id)
        params["wf_task_id"] = uuid6.uuid7()
        (before, *_) = yield self.retry_batch(params)
        if not before:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return _status(before) == WorkflowStatus.PARKED

    def deliver_once(self, tenant_id: str, workflow_id: str, event: Event, key: str) -> Op[bool]:
        """``Outbox.deliver_once``: True if delivered now, False if ``key`` was seen."""
        params = self.event_params(tenant_id, workflow_id, event)
        params["key"] = stored_text(key, "delivery key")
        results = yield self.deliver_once_batch(params)
        status = _status(results[0])
        if status is None:
            raise WorkflowNotFound(workflow_id, tenant_id)
        if any(row.get("seen") for rows in results for row in rows):
            return False
        signal_outcome(tenant_id, workflow_id, status)
        return True

    def deliver_once_batch(self, params: dict[str, Any]) -> Batch:
        """Deliver once: the first statement's rows hold the locked row's status (none:
        not found), a row of some statement ``seen`` (the key was there)."""
        raise NotImplementedError

    def get(self, tenant_id: str, workflow_id: str) -> Op[WorkflowRecord]:
        (rows, *_) = yield self.get_batch(self.where(tenant_id, workflow_id))
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return record_from_row(rows[0])

    @staticmethod
    def _start(new: NewWorkflow, batch: Batch) -> Op[list[Rows]]:
        try:
            results = yield batch
        except pg_errors.UniqueViolation as exc:
            raise WorkflowAlreadyExists(new.workflow_id) from exc
        if not results[0]:
            raise WorkflowAlreadyExists(new.workflow_id)
        return results

    # -- each variant's batches: the first statement's rows say what happened --

    @abstractmethod
    def start_batch(self, params: dict[str, Any], own_workers: Sequence[str] | None) -> Batch:
        """Start: a row if the workflow was inserted (none: the id is taken)."""

    @abstractmethod
    def start_leased_batch(self, params: dict[str, Any]) -> Batch:
        """Eager start: as ``start_batch``; the rows hold created_at, updated_at and
        lease_expires."""

    @abstractmethod
    def signal_batch(self, params: dict[str, Any]) -> Batch:
        """Signal: the locked row's status as it was (no row: not found)."""

    @abstractmethod
    def cancel_batch(self, params: dict[str, Any]) -> Batch:
        """Cancel: the locked row's status and cancel_requested as they were."""

    @abstractmethod
    def terminate_batch(self, params: dict[str, Any]) -> Batch:
        """Terminate: the locked row's status as it was."""

    @abstractmethod
    def retry_batch(self, params: dict[str, Any]) -> Batch:
        """Retry of a parked workflow: the locked row's status as it was."""

    @abstractmethod
    def get_batch(self, params: dict[str, Any]) -> Batch:
        """Get: the ``RECORD`` columns and ``pending`` (no row: not found)."""


def _status(rows: Rows) -> WorkflowStatus | None:
    """The locked row's status as it was before the write (None: no such row)."""
    return WorkflowStatus(rows[0]["status"]) if rows else None


class PostgresOps(ClientOps):
    """Each operation is one statement (``flows_pg._sql``)."""

    def start_batch(self, params: dict[str, Any], own_workers: Sequence[str] | None) -> Batch:
        local = None if own_workers is None else list(own_workers)
        params.update(local=local, horizon=WORKER_HORIZON)
        return [Step(self.st(_sql.START if local is None else _sql.START_QUIET), params)]

    def start_leased_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.START_LEASED), params)]

    def signal_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.SIGNAL), params)]

    def cancel_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.CANCEL), params)]

    def terminate_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.TERMINATE), params)]

    def retry_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.RETRY_WORKFLOW), params)]

    def get_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.GET_WORKFLOW), params)]

    def deliver_once_batch(self, params: dict[str, Any]) -> Batch:
        return [
            Step(self.st(_sql_children.DELIVER_LOCK), params),
            Step(self.st(_sql_children.DELIVER_ONCE), params),
        ]
