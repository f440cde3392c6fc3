"""The consistency scans (``flows_core.store.FsckScan``) of the SQL stores, written once
for PostgresStore and CitusStore: each variant names its statements (``FSCK_SQL``) and
the shard keys to scan one by one (None: the whole table in one statement)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import timedelta
from types import ModuleType
from typing import Any, ClassVar

from flows_core.store import FsckExpiredLease, FsckOrphan, FsckWorkflow

from ._base import Rows, SqlStore
from ._records import record_from_row, utc

__all__ = ["FsckSqlStore"]


class FsckSqlStore(SqlStore, ABC):
    """A SqlStore with the read-only scans ``flows fsck`` uses."""

    FSCK_SQL: ClassVar[ModuleType]
    """FSCK_WORKFLOWS, FSCK_ORPHAN_INBOX, FSCK_ORPHAN_TASKS, FSCK_EXPIRED_LEASES."""

    @abstractmethod
    async def _fsck_keys(self, tenant_id: str | None) -> Sequence[str | None]:
        """The shard keys to scan one at a time, in ascending order ([None]: all at once)."""

    async def _fsck_read(self, template: str, key: str | None, params: dict[str, Any]) -> Rows:
        if key is not None:
            params = {**params, "sk": key}
        return await self._run_one(self.statements(template), params, read=True)

    async def fsck_workflows(
        self, *, tenant_id: str | None, after: tuple[str, str, str] | None, limit: int
    ) -> list[FsckWorkflow]:
        found: list[FsckWorkflow] = []
        for key in await self._fsck_keys(tenant_id):
            if len(found) >= limit:
                break
            if key is not None and after is not None and key < after[0]:
                continue
            # Keys are scanned in Python's order: a later key than the cursor's is read
            # from its start, not compared with the cursor in the database's collation.
            first = after is None or (key is not None and key != after[0])
            params = {
                "tid": tenant_id,
                "first": first,
                "after_sk": after[0] if after else "",
                "after_tid": after[1] if after else "",
                "after_wid": after[2] if after else "",
                "limit": limit - len(found),
            }
            rows = await self._fsck_read(self.FSCK_SQL.FSCK_WORKFLOWS, key, params)
            found += [
                FsckWorkflow(
                    record=record_from_row(row),
                    workflow_tasks=int(row["workflow_tasks"]),
                    activity_tasks=int(row["activity_tasks"]),
                    timer_tasks=int(row["timer_tasks"]),
                    inbox_rows=int(row["inbox_rows"]),
                    history_rows=int(row["history_rows"]),
                    history_last=int(row["history_last"]),
                )
                for row in rows
            ]
        return found

    async def fsck_orphans(self, *, tenant_id: str | None, limit: int) -> list[FsckOrphan]:
        found: list[FsckOrphan] = []
        for key in await self._fsck_keys(tenant_id):
            for template in (self.FSCK_SQL.FSCK_ORPHAN_INBOX, self.FSCK_SQL.FSCK_ORPHAN_TASKS):
                if len(found) >= limit:
                    return found
                params = {"tid": tenant_id, "limit": limit - len(found)}
                rows = await self._fsck_read(template, key, params)
                found += [
                    FsckOrphan(
                        kind=row["kind"],
                        tenant_id=row["tenant_id"],
                        workflow_id=row["workflow_id"],
                        shard_key=row["shard_key"],
                        rows=int(row["rows"]),
                    )
                    for row in rows
                ]
        return found

    async def fsck_expired_leases(
        self, *, tenant_id: str | None, older_than: timedelta, limit: int
    ) -> list[FsckExpiredLease]:
        found: list[FsckExpiredLease] = []
        for key in await self._fsck_keys(tenant_id):
            params = {"tid": tenant_id, "age": older_than, "limit": limit}
            rows = await self._fsck_read(self.FSCK_SQL.FSCK_EXPIRED_LEASES, key, params)
            found += [
                FsckExpiredLease(
                    tenant_id=row["tenant_id"],
                    workflow_id=row["workflow_id"],
                    shard_key=row["shard_key"],
                    task_id=row["task_id"],
                    kind=row["kind"],
                    seq=int(row["seq"]),
                    owner=row["owner"],
                    expired_at=utc(row["expired_at"]),
                )
                for row in rows
            ]
        found.sort(key=lambda lease: (lease.expired_at, lease.task_id))
        return found[: max(0, limit)]
