"""Durable schedules on the SQL stores (``flows_core.store.ScheduleStore``): what
PostgresStore and CitusStore share. The statements are ``flows_pg._sql_schedules``;
each variant says which shard keys a call reads (PostgreSQL: none named, one statement;
Citus: one router statement per key)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec
import uuid6

from flows_core._errors import LeaseLost, ScheduleNotFound
from flows_core.store import (
    ScheduleAdvance,
    ScheduleClaim,
    ScheduleLease,
    ScheduleRecord,
    stored_payload,
)

from ._base import SqlStore, Step
from ._records import utc, uuid_of

__all__ = ["ScheduleSqlStore", "schedule_from_row"]


def _utc(value: datetime | None) -> datetime | None:
    return None if value is None else utc(value)


def schedule_from_row(row: Mapping[str, Any]) -> ScheduleRecord:
    """A ``ScheduleRecord`` from a row with ``SCHEDULE_COLUMNS``."""
    return ScheduleRecord(
        tenant_id=row["tenant_id"],
        schedule_id=row["schedule_id"],
        shard_key=row["shard_key"],
        workflow_name=row["workflow_name"],
        workflow_version=int(row["workflow_version"]),
        input=msgspec.Raw(row["input"].encode()),
        spec=msgspec.Raw(row["spec"].encode()),
        paused=bool(row["paused"]),
        next_tick_at=_utc(row["next_tick_at"]),
        due_at=_utc(row["due_at"]),
        trigger_at=_utc(row["trigger_at"]),
        last_tick_at=_utc(row["last_tick_at"]),
        last_workflow_id=row["last_workflow_id"],
        buffered_tick_at=_utc(row["buffered_tick_at"]),
        revision=int(row["revision"]),
        created_at=_utc(row["created_at"]),
        updated_at=_utc(row["updated_at"]),
    )


class ScheduleSqlStore(SqlStore, ABC):
    """A SqlStore with durable schedules."""

    @abstractmethod
    def _schedule_sql(self, name: str, shard_keys: Sequence[str] | None = None) -> str:
        """The compiled statement ``name`` (for claims and wake-ups: of ``shard_keys``)."""

    @abstractmethod
    async def _schedule_key(self, tenant_id: str, schedule_id: str) -> dict[str, Any]:
        """The parameters that place one schedule (Citus: its shard key ``sk``)."""

    @abstractmethod
    async def _schedule_scan(self, shard_keys: Sequence[str] | None) -> Sequence[dict[str, Any]]:
        """One parameter set per statement a scan of ``shard_keys`` runs."""

    @abstractmethod
    async def _schedule_list_scan(self, tenant_id: str | None) -> Sequence[dict[str, Any]]:
        """One parameter set per statement a listing of ``tenant_id`` runs."""

    async def _claim_due(
        self, probe: str, claim: str, shard_keys: Sequence[str] | None, limit: int, lease: timedelta
    ) -> tuple[str, list[dict[str, Any]]]:
        """Lease up to ``limit`` due rows of ``shard_keys`` (schedules, debounce windows):
        with several statements to scan, one ``probe`` of every key (one round trip) and
        ``claim`` on the keys it found due only. Returns the lease token and the rows."""
        scans = await self._schedule_scan(shard_keys)
        if len(scans) > 1:
            probes = await self._run(
                [Step(probe, extra) for extra in scans], transaction=False, read=True
            )
            scans = [extra for extra, rows in zip(scans, probes, strict=True) if rows[0]["found"]]
        token = uuid6.uuid7()
        claimed: list[dict[str, Any]] = []
        for extra in scans:
            if len(claimed) >= limit:
                break
            params = {**extra, "limit": limit - len(claimed), "token": token, "lease": lease}
            claimed += await self._run_one(claim, params)
        return str(token), claimed

    async def put_schedule(
        self, schedule: ScheduleRecord, *, expected_revision: int | None
    ) -> bool:
        params = await self._schedule_key(schedule.tenant_id, schedule.schedule_id)
        params.setdefault("sk", schedule.shard_key)
        params.update(
            tid=schedule.tenant_id,
            sid=schedule.schedule_id,
            name=schedule.workflow_name,
            version=schedule.workflow_version,
            input=stored_payload(schedule.input, "schedule input"),
            spec=stored_payload(schedule.spec, "schedule spec"),
            paused=schedule.paused,
            next_tick=schedule.next_tick_at,
            due=schedule.due_at,
            trigger=schedule.trigger_at,
            revision=expected_revision,
        )
        name = "SCHEDULE_INSERT" if expected_revision is None else "SCHEDULE_UPDATE"
        rows = await self._run_one(self._schedule_sql(name), params)
        return bool(rows)

    async def get_schedule(self, tenant_id: str, schedule_id: str) -> ScheduleRecord:
        params = await self._schedule_key(tenant_id, schedule_id)
        params.update(tid=tenant_id, sid=schedule_id)
        rows = await self._run_one(self._schedule_sql("SCHEDULE_GET"), params, read=True)
        if not rows:
            raise ScheduleNotFound(schedule_id, tenant_id)
        return schedule_from_row(rows[0])

    async def list_schedules(
        self, tenant_id: str | None, *, after: tuple[str, str] | None, limit: int
    ) -> list[ScheduleRecord]:
        if limit <= 0:
            return []
        base = {
            "tid": tenant_id,
            "first": after is None,
            "after_sid": after[0] if after else "",
            "after_tid": after[1] if after else "",
            "limit": limit,
        }
        steps = [
            Step(self._schedule_sql("SCHEDULE_LIST"), {**base, **extra})
            for extra in await self._schedule_list_scan(tenant_id)
        ]
        per_step = await self._run(steps, transaction=False, read=True)
        found = [schedule_from_row(row) for rows in per_step for row in rows]
        found.sort(key=lambda r: (r.schedule_id, r.tenant_id))
        return found[:limit]

    async def delete_schedule(self, tenant_id: str, schedule_id: str) -> bool:
        params = await self._schedule_key(tenant_id, schedule_id)
        params.update(tid=tenant_id, sid=schedule_id)
        return bool(await self._run_one(self._schedule_sql("SCHEDULE_DELETE"), params))

    async def claim_schedules(
        self, shard_keys: Sequence[str] | None, *, limit: int, lease: timedelta
    ) -> list[ScheduleClaim]:
        if limit <= 0 or (shard_keys is not None and not shard_keys):
            return []
        probe = self._schedule_sql("SCHEDULE_PROBE")
        claim = self._schedule_sql("SCHEDULE_CLAIM", shard_keys)
        token, rows = await self._claim_due(probe, claim, shard_keys, limit, lease)
        claims: list[ScheduleClaim] = []
        for row in rows:
            record = schedule_from_row(row)
            claims.append(
                ScheduleClaim(
                    lease=ScheduleLease(
                        tenant_id=record.tenant_id,
                        schedule_id=record.schedule_id,
                        shard_key=record.shard_key,
                        token=token,
                        expires_at=utc(row["lease_expires_at"]),
                    ),
                    schedule=record,
                )
            )
        return claims

    async def advance_schedule(self, advance: ScheduleAdvance) -> bool:
        lease = advance.lease
        try:
            token = uuid_of(lease.token, "schedule lease token")
        except LeaseLost:
            return False  # not a token of this store: no row holds it
        params = {
            "sk": lease.shard_key,
            "tid": lease.tenant_id,
            "sid": lease.schedule_id,
            "token": token,
            "revision": advance.revision,
            "next_tick": advance.next_tick_at,
            "due": advance.due_at,
            "trigger": advance.trigger_at,
            "last_tick": advance.last_tick_at,
            "last_workflow": advance.last_workflow_id,
            "buffered": advance.buffered_tick_at,
        }
        return bool(await self._run_one(self._schedule_sql("SCHEDULE_ADVANCE"), params))

    async def next_schedule_due(self, shard_keys: Sequence[str] | None) -> datetime | None:
        if shard_keys is not None and not shard_keys:
            return None
        statement = self._schedule_sql("SCHEDULE_NEXT_DUE", shard_keys)
        steps = [Step(statement, extra) for extra in await self._schedule_scan(shard_keys)]
        per_step = await self._run(steps, transaction=False, read=True)
        found = [rows[0]["due"] for rows in per_step if rows[0]["due"] is not None]
        return utc(min(found)) if found else None
