"""``SyncClient``: start, signal, cancel and query from synchronous code (Django, Flask),
on the caller's own psycopg ``Connection`` and inside its transaction. On a schema
migrated for Citus it runs the Citus statements (found on first use)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import psycopg
from psycopg import sql
from psycopg.pq import TransactionStatus
from psycopg.rows import tuple_row

from flows_core._clock import SystemClock
from flows_core._codec import DEFAULT_MAX_PAYLOAD_BYTES, check_id
from flows_core._definitions import Workflow
from flows_core._engine import Engine, Planner, WorkflowInfo
from flows_core._sharding import Sharder
from flows_core.store import CancelOutcome

from ._client_ops import ClientStatements, Op, cancel_op, get_op, signal_op, start_op
from ._migrate import check_schema

if TYPE_CHECKING:
    from flows_citus._client_ops import CitusStatements
    from flows_citus._layout import CitusLayout

__all__ = ["SyncClient"]

T = TypeVar("T")


class SyncClient:
    """The client operations of ``Engine`` for sync code.

    Pass ``tx=`` a ``psycopg.Connection``: the statement runs in its current transaction,
    which the caller commits or rolls back (never this client). Without ``tx`` the client
    opens a short autocommit connection to ``conninfo``. The first call looks whether the
    schema was migrated for Citus; if so, the client follows the schema's layout (a
    ``sharder=`` given here must then be left out) and sends router queries only.
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
        self._sharder_given = sharder is not None
        self._citus: tuple[CitusStatements, CitusLayout] | None = None
        self._checked = False

    @contextlib.contextmanager
    def _connection(self, tx: Any) -> Iterator[psycopg.Connection[Any]]:
        if tx is None:
            if self.conninfo is None:
                raise TypeError("SyncClient without conninfo needs tx=<psycopg.Connection>")
            with psycopg.connect(self.conninfo, autocommit=True) as conn:
                yield conn
            return
        if not isinstance(tx, psycopg.Connection):
            raise TypeError(
                "tx= takes a psycopg.Connection in an open transaction, "
                f"got {type(tx).__module__}.{type(tx).__qualname__}"
            )
        if tx.closed:
            raise ValueError("tx= is a closed connection")
        if tx.info.transaction_status == TransactionStatus.INERROR:
            raise ValueError("tx= is a connection whose transaction has failed")
        yield tx

    def _citus_of(
        self, conn: psycopg.Connection[Any]
    ) -> tuple[CitusStatements, CitusLayout] | None:
        """(statements, layout) if the schema is migrated for Citus, else None."""
        if not self._checked:
            from flows_citus._client_ops import CitusStatements, layout_op

            statements = CitusStatements(self.schema, self._st_ident)
            layout = self._drive_batches(layout_op(statements), conn)
            if layout is not None:
                self._citus = (statements, layout)
                if not self._sharder_given:
                    self.planner.sharder = layout
            self._checked = True
        return self._citus

    @property
    def _st_ident(self) -> str:
        return sql.Identifier(self.schema).as_string(None)

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

    @staticmethod
    def _drive_batches(op: Any, conn: psycopg.Connection[Any]) -> Any:
        """Run a Citus client operation: each batch in one transaction (a savepoint
        inside the caller's transaction)."""
        try:
            batch = next(op)
            while True:
                results = []
                with conn.transaction():
                    for step in batch:
                        with conn.cursor(row_factory=tuple_row) as cur:
                            cur.execute(step.statement, step.params)
                            results.append(cur.fetchall() if step.rows else [])
                batch = op.send(results)
        except StopIteration as stop:
            return stop.value

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
        with self._connection(tx) as conn:
            citus = self._citus_of(conn)
            new, _ = self.planner.start(workflow, input, tenant_id, workflow_id, execution_timeout)
            if citus is not None:
                from flows_citus._client_ops import start_op as citus_start

                self._drive_batches(citus_start(citus[0], citus[1], new), conn)
            else:
                self._drive(start_op(self._st, new), conn)
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
        wf_id = check_id(workflow_id, "workflow id")
        with self._connection(tx) as conn:
            citus = self._citus_of(conn)
            if citus is not None:
                from flows_citus._client_ops import signal_op as citus_signal

                self._drive_batches(citus_signal(citus[0], citus[1], tenant, wf_id, event), conn)
            else:
                self._drive(signal_op(self._st, tenant, wf_id, event), conn)

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
        wf_id = check_id(workflow_id, "workflow id")
        with self._connection(tx) as conn:
            citus = self._citus_of(conn)
            if citus is not None:
                from flows_citus._client_ops import cancel_op as citus_cancel

                outcome: CancelOutcome = self._drive_batches(
                    citus_cancel(citus[0], citus[1], tenant, wf_id, event), conn
                )
                return outcome
            return self._drive(cancel_op(self._st, tenant, wf_id, event), conn)

    def query(
        self, workflow_id: str, *, tenant_id: str | None = None, tx: Any = None
    ) -> WorkflowInfo:
        tenant = self.planner.tenant_for(tenant_id)
        wf_id = check_id(workflow_id, "workflow id")
        with self._connection(tx) as conn:
            citus = self._citus_of(conn)
            if citus is not None:
                from flows_citus._client_ops import get_op as citus_get

                record = self._drive_batches(citus_get(citus[0], citus[1], tenant, wf_id), conn)
            else:
                record = self._drive(get_op(self._st, tenant, wf_id), conn)
        return Engine.info(record)
