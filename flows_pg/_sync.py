"""``SyncClient``: start, signal, cancel, terminate and query from synchronous code
(Django, Flask), on the caller's own psycopg ``Connection`` and inside its transaction.

It runs the same client operations as the async store (``flows_pg._client_ops``) with
the sync driver (``flows_pg._base.drive_sync``). ``flows_pg.SyncClient`` speaks to a
PostgreSQL schema; ``flows_citus.SyncClient`` to a Citus one.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import Any, TypeVar

import psycopg

from flows_core._clock import SystemClock
from flows_core._codec import DEFAULT_MAX_PAYLOAD_BYTES, check_name
from flows_core._definitions import Workflow
from flows_core._engine import Engine, IfExists, Planner, WorkflowInfo, taken_by_another
from flows_core._errors import InvalidArgument, WorkflowAlreadyExists
from flows_core._sharding import Sharder
from flows_core.store import CancelOutcome, TerminateOutcome

from ._base import Op, Statements, check_sync_tx, drive_sync, store_error
from ._client_ops import ClientOps, PostgresOps
from ._debounce import debounce_batch, debounce_op

__all__ = ["BaseSyncClient", "SyncClient"]

T = TypeVar("T")


class BaseSyncClient(ABC):
    """The client operations of ``Engine`` for sync code, on one variant's statements.

    Pass ``tx=`` a ``psycopg.Connection``: the statements run in its current
    transaction, which the caller commits or rolls back (never this client). Without
    ``tx`` the client opens a short autocommit connection to ``conninfo``.
    """

    def __init__(
        self,
        conninfo: str | None = None,
        *,
        schema: str = "flows",
        workflows: Iterable[Workflow[Any, Any]] = (),
        sharder: Sharder | None = None,
        require_tenant: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.conninfo = conninfo
        self.statements = Statements(schema)
        self.schema = self.statements.schema
        self.planner = Planner(
            SystemClock(),
            workflows=workflows,
            sharder=sharder,
            require_tenant=require_tenant,
            max_payload_bytes=max_payload_bytes,
        )

    @abstractmethod
    def _client_ops(self, conn: psycopg.Connection[Any]) -> ClientOps:
        """This variant's client operations (``conn``: to read what they need)."""

    @contextlib.contextmanager
    def _connection(self, tx: Any) -> Iterator[psycopg.Connection[Any]]:
        if tx is not None:
            yield check_sync_tx(tx)
            return
        if self.conninfo is None:
            raise TypeError(f"{type(self).__name__} without conninfo needs tx=<psycopg.Connection>")
        try:
            conn = psycopg.connect(self.conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise store_error(exc) from exc
        with conn:
            yield conn

    def _run(self, tx: Any, make: Any) -> Any:
        """Run the operation ``make(ops)`` on ``tx`` or a connection of its own."""
        with self._connection(tx) as conn:
            op: Op[Any] = make(self._client_ops(conn))
            return drive_sync(op, conn)

    def start(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
        if_exists: IfExists = "error",
        debounce: timedelta | None = None,
        debounce_key: str | None = None,
    ) -> str:
        """Start a workflow; returns its id. Validates exactly like ``Engine.start``
        (``execution_timeout`` too); ``if_exists="return"`` returns the id of the
        workflow already there (see ``Engine.start``). ``debounce``/``debounce_key``: a
        debounced start (see ``Engine.start``); returns the id of the workflow its window
        will start."""
        if if_exists not in ("error", "return"):
            raise InvalidArgument(f"if_exists must be 'error' or 'return', got {if_exists!r}")
        if debounce is not None or debounce_key is not None:
            with self._connection(tx) as conn:
                self._client_ops(conn)  # Citus: reads the layout that places the key
                pending, window, _ = self.planner.debounced(
                    workflow,
                    input,
                    tenant_id,
                    debounce,
                    debounce_key,
                    workflow_id=workflow_id,
                    execution_timeout=execution_timeout,
                )
                batch = debounce_batch(self.statements, pending, window)
                return drive_sync(debounce_op(batch), conn).workflow_id
        with self._connection(tx) as conn:
            ops = self._client_ops(conn)
            new, _ = self.planner.start(workflow, input, tenant_id, workflow_id, execution_timeout)
            try:
                drive_sync(ops.start(new), conn)
            except WorkflowAlreadyExists:
                if if_exists == "error":
                    raise
                record = drive_sync(ops.get(new.tenant_id, new.workflow_id), conn)
                if record.name != new.name:
                    raise taken_by_another(new.workflow_id, record.name, new.name) from None
        return new.workflow_id

    def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Signal a workflow (see ``Engine.signal``, ``idempotency_key`` too); True if it
        was delivered now."""
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.signal(name, payload)
        )
        if idempotency_key is None:
            self._run(tx, lambda ops: ops.signal(tenant, wf_id, event))
            return True
        key = "signal:" + check_name(idempotency_key, "idempotency key")
        delivered: bool = self._run(tx, lambda ops: ops.deliver_once(tenant, wf_id, event, key))
        return delivered

    def cancel(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> CancelOutcome:
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.cancel(reason)
        )
        outcome: CancelOutcome = self._run(tx, lambda ops: ops.cancel(tenant, wf_id, event))
        return outcome

    def terminate(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> TerminateOutcome:
        """End the workflow at once (see ``Engine.terminate``)."""
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.terminate(reason)
        )
        outcome: TerminateOutcome = self._run(tx, lambda ops: ops.terminate(tenant, wf_id, event))
        return outcome

    def query(
        self, workflow_id: str, *, tenant_id: str | None = None, tx: Any = None
    ) -> WorkflowInfo:
        tenant, wf_id = self.planner.target(workflow_id, tenant_id)
        return Engine.info(self._run(tx, lambda ops: ops.get(tenant, wf_id)))


class SyncClient(BaseSyncClient):
    """``BaseSyncClient`` on a PostgreSQL schema (``flows_citus.SyncClient`` on Citus)."""

    def __init__(self, conninfo: str | None = None, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        self._ops = PostgresOps(self.statements)

    def _client_ops(self, conn: psycopg.Connection[Any]) -> ClientOps:
        return self._ops
