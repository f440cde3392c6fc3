"""``SyncClient``: start, signal, cancel and query from synchronous code (Django, Flask),
on the caller's own psycopg ``Connection`` and inside its transaction."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from flows_core._clock import SystemClock
from flows_core._codec import DEFAULT_MAX_PAYLOAD_BYTES, check_id
from flows_core._definitions import Workflow
from flows_core._engine import Engine, Planner, WorkflowInfo
from flows_core._sharding import Sharder
from flows_core._store import CancelOutcome

from ._client_ops import ClientStatements, Op, cancel_op, get_op, signal_op, start_op
from ._migrate import check_schema

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """The client operations of ``Engine`` for sync code.

    Pass ``tx=`` a ``psycopg.Connection``: the statement runs in its current transaction,
    which the caller commits or rolls back (never this client). Without ``tx`` the client
    opens a short autocommit connection to ``conninfo``.
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
        self.schema = check_schema(schema)
        self.planner = Planner(
            SystemClock(),
            workflows=workflows,
            sharder=sharder,
            require_tenant=require_tenant,
            max_payload_bytes=max_payload_bytes,
        )
        self._st = ClientStatements(self.schema, sql.Identifier(self.schema).as_string(None))

    def _run(self, op: Op[T], tx: Any) -> T:
        if tx is None:
            if self.conninfo is None:
                raise TypeError("SyncClient without conninfo needs tx=<psycopg.Connection>")
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                return self._drive(op, conn)
        if not isinstance(tx, psycopg.Connection):
            raise TypeError(
                "tx= takes a psycopg.Connection in an open transaction, "
                f"got {type(tx).__module__}.{type(tx).__qualname__}"
            )
        if tx.closed:
            raise ValueError("tx= is a closed connection")
        if tx.info.transaction_status == TransactionStatus.INERROR:
            raise ValueError("tx= is a connection whose transaction has failed")
        return self._drive(op, tx)

    @staticmethod
    def _drive(op: Op[T], conn: psycopg.Connection[Any]) -> T:
        try:
            statement, params = next(op)
            while True:
                try:
                    with conn.cursor(row_factory=tuple_row) as cur:
                        cur.execute(statement, params)
                        rows = cur.fetchall() if cur.description is not None else []
                except psycopg.Error as exc:
                    statement, params = op.throw(exc)
                else:
                    statement, params = op.send(rows)
        except StopIteration as stop:
            result: T = stop.value
            return result

    def start(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
    ) -> str:
        """Start a workflow; returns its id. Validates exactly like ``Engine.start``
        (``execution_timeout`` too)."""
        new, _ = self.planner.start(workflow, input, tenant_id, workflow_id, execution_timeout)
        self._run(start_op(self._st, new), tx)
        return new.workflow_id

    def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> None:
        tenant = self.planner.tenant_for(tenant_id)
        event = self.planner.signal(name, payload)
        self._run(signal_op(self._st, tenant, check_id(workflow_id, "workflow id"), event), tx)

    def cancel(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> CancelOutcome:
        tenant = self.planner.tenant_for(tenant_id)
        event = self.planner.cancel(reason)
        return self._run(
            cancel_op(self._st, tenant, check_id(workflow_id, "workflow id"), event), tx
        )

    def query(
        self, workflow_id: str, *, tenant_id: str | None = None, tx: Any = None
    ) -> WorkflowInfo:
        tenant = self.planner.tenant_for(tenant_id)
        record = self._run(get_op(self._st, tenant, check_id(workflow_id, "workflow id")), tx)
        return Engine.info(record)
