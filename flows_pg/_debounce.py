"""Debounced starts on the SQL stores (``flows_core.store.DebounceStore``): what
PostgresStore and CitusStore share. The statements are ``flows_pg._sql_debounce``; the
shard keys a scan reads come from ``_schedule_scan`` (PostgreSQL: one statement over a
list; Citus: one router statement per key)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from flows_core._errors import LeaseLost
from flows_core.store import (
    PendingStart,
    PendingStartClaim,
    PendingStartLease,
    stored_payload,
    stored_text,
)

from ._base import Op, SqlStore, Statements, Step
from ._records import utc, uuid_of
from ._sql_debounce import debounce_statements

__all__ = ["DebounceSqlStore", "debounce_batch", "debounce_op", "pending_from_row"]

_PG_SQL: Final = debounce_statements(sharded=False)
_CITUS_SQL: Final = debounce_statements(sharded=True)
_SHARDS_FILTER: Final = "AND p.shard_key = ANY(%(shards)s::text[])"


def pending_from_row(row: Mapping[str, Any]) -> PendingStart:
    """A ``PendingStart`` from a row with ``PENDING_COLUMNS``."""
    return PendingStart(
        tenant_id=row["tenant_id"],
        workflow_name=row["workflow_name"],
        debounce_key=row["debounce_key"],
        shard_key=row["shard_key"],
        workflow_id=row["workflow_id"],
        workflow_version=int(row["workflow_version"]),
        input=msgspec.Raw(row["input"].encode()),
        fires_at=utc(row["fires_at"]),
        starts=int(row["starts"]),
    )


def debounce_batch(statements: Statements, pending: PendingStart, window: timedelta) -> list[Step]:
    """One debounced start, one transaction (PostgreSQL and Citus alike: both statements
    name the row's shard key): close the key's window if its time has come, then open
    one or replace the open one's input. The second step returns the open row."""
    for text, what in (
        (pending.tenant_id, "tenant id"),
        (pending.debounce_key, "debounce key"),
        (pending.workflow_id, "workflow id"),
    ):
        stored_text(text, what)
    params = {
        "sk": pending.shard_key,
        "tid": pending.tenant_id,
        "name": pending.workflow_name,
        "key": pending.debounce_key,
        "wid": pending.workflow_id,
        "version": pending.workflow_version,
        "input": stored_payload(pending.input, "workflow input"),
        "window": window,
    }
    return [
        Step(statements(_PG_SQL["DEBOUNCE_CLOSE_DUE"]), params),
        Step(statements(_PG_SQL["DEBOUNCE_UPSERT"]), params),
    ]


def debounce_op(batch: list[Step]) -> Op[PendingStart]:
    """``debounce_batch`` as an operation (the sync clients drive it)."""
    rows = yield batch
    return pending_from_row(rows[1][0])


class DebounceSqlStore(SqlStore, ABC):
    """A SqlStore with debounced starts (after ScheduleSqlStore among a store's bases)."""

    @abstractmethod
    async def _schedule_scan(self, shard_keys: Sequence[str] | None) -> Sequence[dict[str, Any]]:
        """One parameter set per statement a scan of ``shard_keys`` runs."""

    @abstractmethod
    async def _claim_due(
        self, probe: str, claim: str, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> tuple[str, list[dict[str, Any]]]:
        """ScheduleSqlStore's leased claim of due rows (its probe, then its claim)."""

    def _debounce_sql(self, name: str, shard_keys: Sequence[str] | None = None) -> str:
        if self.CITUS:
            return self.statements(_CITUS_SQL[name])
        filter_ = _SHARDS_FILTER if shard_keys is not None else ""
        return self.statements(_PG_SQL[name].replace("{shards}", filter_))

    async def debounce_start(
        self, pending: PendingStart, *, window: timedelta, tx: Any = None
    ) -> PendingStart:
        rows = await self._run(debounce_batch(self.statements, pending, window), tx)
        return pending_from_row(rows[1][0])

    async def claim_pending_starts(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[PendingStartClaim]:
        if limit <= 0 or (shard_keys is not None and not shard_keys):
            return []
        probe = self._debounce_sql("DEBOUNCE_PROBE")
        claim = self._debounce_sql("DEBOUNCE_CLAIM", shard_keys)
        token, rows = await self._claim_due(probe, claim, shard_keys, limit, lease)
        claims: list[PendingStartClaim] = []
        for row in rows:
            record = pending_from_row(row)
            claims.append(
                PendingStartClaim(
                    lease=PendingStartLease(
                        tenant_id=record.tenant_id,
                        workflow_name=record.workflow_name,
                        debounce_key=record.debounce_key,
                        shard_key=record.shard_key,
                        workflow_id=record.workflow_id,
                        token=token,
                        expires_at=utc(row["lease_expires_at"]),
                    ),
                    pending=record,
                )
            )
        return claims

    async def finish_pending_start(self, lease: PendingStartLease) -> bool:
        try:
            token = uuid_of(lease.token, "debounce lease token")
        except LeaseLost:
            return False  # not a token of this store: no row holds it
        params = {
            "sk": lease.shard_key,
            "tid": lease.tenant_id,
            "name": lease.workflow_name,
            "key": lease.debounce_key,
            "wid": lease.workflow_id,
            "token": token,
        }
        return bool(await self._run_one(self._debounce_sql("DEBOUNCE_FINISH"), params))

    async def next_pending_start_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        if shard_keys is not None and not shard_keys:
            return None
        statement = self._debounce_sql("DEBOUNCE_NEXT_DUE", shard_keys)
        steps = [Step(statement, extra) for extra in await self._schedule_scan(shard_keys)]
        per_step = await self._run(steps, transaction=False, read=True)
        found = [rows[0]["due"] for rows in per_step if rows[0]["due"] is not None]
        return utc(min(found)) if found else None

    async def get_pending_start(
        self, tenant_id: str, workflow_name: str, debounce_key: str, shard_key: str
    ) -> PendingStart | None:
        params = {"sk": shard_key, "tid": tenant_id, "name": workflow_name, "key": debounce_key}
        rows = await self._run_one(self._debounce_sql("DEBOUNCE_GET"), params, read=True)
        return pending_from_row(rows[0]) if rows else None
