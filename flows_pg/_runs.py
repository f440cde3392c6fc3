"""The archive of earlier runs (``flows_core.store.RunArchive``) on the SQL stores: a
mixin of ``PostgresStore`` and ``CitusStore`` (statements in ``flows_pg._sql_runs``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec

from flows_core._errors import WorkflowNotFound
from flows_core.events import Event, decode_events
from flows_core.store import RunRecord

from ._base import Rows, Statements
from ._records import utc

if TYPE_CHECKING:
    from ._client_ops import ClientOps

__all__ = ["RunArchiveMixin"]


class RunArchiveMixin:
    """``list_runs`` and ``get_run_history`` with the variant's ``RUN_READS``
    (LIST_RUNS, RUN_HISTORY)."""

    RUN_READS: ClassVar[tuple[str, str]]
    statements: Statements

    if TYPE_CHECKING:

        async def _client_ops(self) -> ClientOps: ...

        async def _run_one(
            self, statement: str, params: Mapping[str, Any], *, read: bool = False
        ) -> Rows: ...

    async def list_runs(self, tenant_id: str, workflow_id: str) -> list[RunRecord]:
        params = (await self._client_ops()).where(tenant_id, workflow_id)
        rows = await self._run_one(self.statements(self.RUN_READS[0]), params, read=True)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        return [
            RunRecord(
                run_number=row["run_number"],
                status=row["status"],
                input=msgspec.Raw(row["input"].encode()),
                started_at=utc(row["started_at"]),
                ended_at=utc(row["ended_at"]),
                history_length=row["history_length"],
            )
            for row in rows
            if row["run_number"] is not None
        ]

    async def get_run_history(
        self, tenant_id: str, workflow_id: str, run_number: int
    ) -> list[Event]:
        params = (await self._client_ops()).where(tenant_id, workflow_id)
        params["run_number"] = run_number
        rows = await self._run_one(self.statements(self.RUN_READS[1]), params, read=True)
        if not rows:
            raise WorkflowNotFound(workflow_id, tenant_id)
        history = rows[0]["history"]
        return [] if history is None else decode_events(history)
