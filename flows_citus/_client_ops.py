"""Client operations on Citus (``flows_pg._base.Op`` generators), written once for
``CitusStore`` and ``flows_citus.SyncClient``: each batch is a short transaction of
router statements (``flows_citus._sql``), sent in one pipeline by the async driver."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows_core._errors import InvalidArgument
from flows_core.store import NewWorkflow
from flows_pg._base import Batch, Op, Statements, Step
from flows_pg._client_ops import ClientOps

from . import _sql, _sql_children
from ._layout import CitusLayout

__all__ = ["CitusOps", "detect_op", "layout_op"]


def layout_op(st: Statements) -> Op[CitusLayout | None]:
    """The schema's layout, or None if the schema is not migrated for Citus."""
    if not (yield from detect_op(st, extension=False)):
        return None
    (rows,) = yield [Step(st("SELECT shards, sharding FROM {S}.layout"), {})]
    return CitusLayout(int(rows[0]["shards"]), str(rows[0]["sharding"])) if rows else None


def detect_op(st: Statements, *, extension: bool) -> Op[bool]:
    """Citus or not: ``extension`` the database has the citus extension (what matters
    before a migration), else the schema was migrated for Citus (has its layout)."""
    if extension:
        query = "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'citus') AS found"
        (rows,) = yield [Step(query, {})]
    else:
        query = "SELECT to_regclass(%(t)s) IS NOT NULL AS found"
        (rows,) = yield [Step(query, {"t": f"{st.ident}.layout"})]
    return bool(rows[0]["found"])


class CitusOps(ClientOps):
    """The client operations on a Citus schema with layout ``layout``."""

    def __init__(self, statements: Statements, layout: CitusLayout) -> None:
        super().__init__(statements)
        self.layout = layout

    def where(self, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        params = super().where(tenant_id, workflow_id)
        params["sk"] = self.layout.locate(tenant_id, workflow_id)
        return params

    def start_params(self, new: NewWorkflow) -> dict[str, Any]:
        expected = self.layout.locate(new.tenant_id, new.workflow_id)
        if new.shard_key != expected:
            raise InvalidArgument(
                f"on Citus the shard key of workflow {new.workflow_id!r} follows from its "
                f"tenant and id: {expected!r}, not {new.shard_key!r} (let Engine use "
                "store.sharder: do not pass sharder= to Engine)"
            )
        return super().start_params(new)

    def _end_now(self, params: dict[str, Any]) -> Batch:
        """The statements that end a workflow now (``params``: with ``end_params``)."""
        names = (_sql.END_HISTORY, _sql.END_TASKS, _sql.END_INBOX, _sql.END_WORKFLOW)
        return [Step(self.st(statement), params) for statement in names]

    def start_batch(self, params: dict[str, Any], own_workers: Sequence[str] | None) -> Batch:
        # Always notified: the payload names the shard key the claims look at first.
        return [
            Step(self.st(_sql.START_WORKFLOW), params),
            Step(self.st(_sql.START_TASK), params),
            Step(self.st(_sql.START_HISTORY), params),
            Step(_sql.NOTIFY_WORK, params),
        ]

    def start_leased_batch(self, params: dict[str, Any]) -> Batch:
        return [
            Step(self.st(_sql.START_WORKFLOW), params),
            Step(self.st(_sql.START_TASK_LEASED), params),
            Step(self.st(_sql.START_HISTORY), params),
        ]

    def signal_batch(self, params: dict[str, Any]) -> Batch:
        return [
            Step(self.st(_sql.INBOX_LOCK), params),
            Step(self.st(_sql.SIGNAL_INSERT), params),
            Step(self.st(_sql.SIGNAL_TASK), params),
            Step(self.st(_sql.SIGNAL_UPDATE), params),
            Step(_sql.NOTIFY_BOTH, params),
        ]

    def cancel_batch(self, params: dict[str, Any]) -> Batch:
        # a running workflow gets the request in its inbox; a parked one ends (END_*)
        return [
            Step(self.st(_sql.INBOX_LOCK), params),
            Step(self.st(_sql.CANCEL_INSERT), params),
            Step(self.st(_sql.CANCEL_TASK), params),
            Step(self.st(_sql.CANCEL_UPDATE), params),
            *self._end_now(params),
            Step(_sql.NOTIFY_BOTH, params),
        ]

    def terminate_batch(self, params: dict[str, Any]) -> Batch:
        return [
            Step(self.st(_sql.INBOX_LOCK), params),
            *self._end_now(params),
            Step(_sql.NOTIFY_BOTH, params),
        ]

    def retry_batch(self, params: dict[str, Any]) -> Batch:
        return [
            Step(self.st(_sql.INBOX_LOCK), params),
            Step(self.st(_sql.RETRY_WORKFLOW_TASK), params),
            Step(self.st(_sql.RETRY_WORKFLOW_RESET), params),
            Step(self.st(_sql.RETRY_WORKFLOW_STATUS), params),
            Step(_sql.NOTIFY_BOTH, params),
        ]

    def get_batch(self, params: dict[str, Any]) -> Batch:
        return [Step(self.st(_sql.GET_WORKFLOW), params)]

    def deliver_once_batch(self, params: dict[str, Any]) -> Batch:
        names = (
            _sql_children.DELIVER_SEEN,
            _sql_children.DELIVER_INSERT,
            _sql_children.DELIVER_TASK,
            _sql_children.DELIVER_UPDATE,
            _sql_children.DELIVER_KEY,
        )
        return [
            Step(self.st(_sql.INBOX_LOCK), params),
            *(Step(self.st(statement), params) for statement in names),
            Step(_sql.NOTIFY_BOTH, params),
        ]
