"""``flows_citus.SyncClient``: ``flows_pg``'s sync client on a Citus schema."""

from __future__ import annotations

from typing import Any

import psycopg

from flows_core._errors import InvalidArgument
from flows_pg._base import drive_sync
from flows_pg._sync import BaseSyncClient

from ._client_ops import CitusOps, layout_op

__all__ = ["SyncClient"]


class SyncClient(BaseSyncClient):
    """Start, signal, cancel, terminate and query a Citus schema from sync code, in the
    caller's transaction (see ``flows_pg.SyncClient``). The first call reads the
    schema's layout; the client then places new workflows by it (a ``sharder=`` given
    here must be left out) and sends router queries only."""

    def __init__(self, conninfo: str | None = None, **kwargs: Any) -> None:
        super().__init__(conninfo, **kwargs)
        self._sharder_given = kwargs.get("sharder") is not None
        self._ops: CitusOps | None = None

    def _client_ops(self, conn: psycopg.Connection[Any]) -> CitusOps:
        if self._ops is None:
            layout = drive_sync(layout_op(self.statements), conn)
            if layout is None:
                raise InvalidArgument(
                    f"schema {self.schema!r} is not migrated for Citus: run "
                    "`flows migrate --citus`, or use flows_pg.SyncClient"
                )
            self._ops = CitusOps(self.statements, layout)
            if not self._sharder_given:
                self.planner.sharder = layout
        return self._ops
