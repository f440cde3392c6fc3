"""Flow control on PostgreSQL and Citus (``flows_core.store.FlowLimits``): the methods
both SQL stores share, over the router statements of ``flows_pg._sql_limits``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final

import msgspec

from flows_core.store import RATE_GRACE, Lease, LimitUsage, SlotGrant, SlotHolder

from . import _sql_limits as _sql
from ._base import Rows, Statements, Step
from ._records import utc, uuid_of

if TYPE_CHECKING:
    from flows_core import Clock

    from ._client_ops import ClientOps

__all__ = ["HOLDER_CHECK", "SqlLimits"]

HOLDER_CHECK: Final = timedelta(seconds=60)
"""How long a workflow holder found alive keeps its slot before it is checked again."""


def _holder_params(bucket: str, limit_key: str, holder: SlotHolder) -> dict[str, Any]:
    workflow = holder.kind == "workflow"
    return {
        "hid": holder_id(holder),
        "bucket": bucket,
        "lk": limit_key,
        "kind": holder.kind,
        "tid": holder.tenant_id,
        "sk": holder.shard_key,
        "wid": holder.workflow_id,
        "task": uuid_of(holder.task_id, "task id"),
        "token": None if workflow else uuid_of(holder.token, "lease token"),
        "expires": holder.expires_at,
    }


def holder_id(holder: SlotHolder) -> str:
    """The ``limit_slots.holder_id`` of a holder (see migration 011)."""
    if holder.kind == "workflow":
        return "w:" + _json.encode([holder.tenant_id, holder.workflow_id]).decode()
    part = f":{holder.part}" if holder.part else ""
    return f"t:{holder.task_id}:{holder.token}{part}"


_json: Final = msgspec.json.Encoder()


class SqlLimits:
    """The FlowLimits half of PostgresStore and CitusStore."""

    statements: Statements

    if TYPE_CHECKING:

        async def _run(
            self,
            batch: Sequence[Step],
            tx: Any = None,
            *,
            transaction: bool = True,
            read: bool = False,
        ) -> list[Rows]: ...

        async def _run_one(
            self, statement: str, params: Mapping[str, Any], *, read: bool = False
        ) -> Rows: ...

        async def _client_ops(self) -> ClientOps: ...

        @property
        def clock(self) -> Clock: ...

    WAITING_SHARD: str = ""
    """The shard filter of ``waiting_reason`` (Citus: the workflow's shard key)."""

    async def acquire_slot(
        self, bucket: str, limit_key: str, capacity: int, holder: SlotHolder, *, wait: bool = True
    ) -> SlotGrant:
        params = _holder_params(bucket, limit_key, holder)
        params["cap"] = capacity
        acquire = [
            Step(self.statements(statement), params)
            for statement in (_sql.ACQUIRE_TAKE, _sql.ACQUIRE_UNWAIT, _sql.ACQUIRE_WAIT, _sql.HELD)
            if wait or statement is not _sql.ACQUIRE_WAIT
        ]
        retry_at: datetime | None = None
        for _ in range(3):
            if (await self._run(acquire))[-1][0]["acquired"]:
                return SlotGrant(acquired=True)
            slots = await self._run_one(self.statements(_sql.SLOTS), params)
            if len(slots) < capacity:  # first use, or a raised capacity: make the rows
                await self._run_one(self.statements(_sql.ensure_slots_sql(capacity)), params)
                continue
            if any(s["holder_kind"] is None for s in slots):
                continue  # a slot freed meanwhile: try again
            freed = False
            expiries: list[datetime] = []
            for slot in slots:
                if not slot["expired"]:
                    expiries.append(utc(slot["expires_at"]))
                    continue
                until = await self._check_holder(params, slot)
                if until is None:
                    freed = True
                else:
                    expiries.append(until)
            if not freed:
                retry_at = min(expiries, default=None)
                break
        return SlotGrant(acquired=False, retry_at=retry_at)

    async def _check_holder(self, params: dict[str, Any], slot: dict[str, Any]) -> datetime | None:
        """Extend the expired slot of a holder still alive, free it otherwise (both only
        if its holder did not change meanwhile). The new expiry, or None if freed."""
        held = {
            "bucket": params["bucket"],
            "lk": params["lk"],
            "slot": slot["slot"],
            "old_expires": slot["expires_at"],
            "hid": slot["holder_id"],
            "kind": slot["holder_kind"],
            "wid": slot["holder_workflow"],
            "token": slot["holder_token"],
            "tid": slot["holder_tenant"],
            "sk": slot["holder_shard"],
            "task": slot["holder_task"],
            "check": HOLDER_CHECK,
        }
        alive = _sql.WORKFLOW_ALIVE if slot["holder_kind"] == "workflow" else _sql.TASK_ALIVE
        rows = await self._run_one(self.statements(alive), held)
        if rows:
            held["until"] = until = utc(rows[0]["until"])
            await self._run_one(self.statements(_sql.EXTEND_SLOT), held)
            return until
        await self._run_one(self.statements(_sql.FREE_SLOT), held)
        return None  # freed (or changed hands meanwhile: look again either way)

    async def release_slot(self, bucket: str, limit_key: str, holder: SlotHolder) -> None:
        params = _holder_params(bucket, limit_key, holder)
        release = [Step(self.statements(s), params) for s in (_sql.RELEASE, _sql.WAITERS)]
        freed, waiting = await self._run(release)
        if not freed[0]["freed"] or not waiting[0]["waiting"]:
            return
        for _ in range(5):  # the oldest waiter still waiting where it was deferred
            popped = await self._run_one(self.statements(_sql.POP_WAITER), params)
            if not popped:
                return
            waiter = popped[0]
            wake = {
                "sk": waiter["shard_key"],
                "tid": waiter["tenant_id"],
                "task": uuid_of(waiter["task_id"], "task id"),
                "ch_work": self.statements.work_channel,
            }
            batch = [Step(self.statements(s), wake) for s in (_sql.WAKE, _sql.NOTIFY_WORK)]
            rows = (await self._run(batch))[0]
            if rows:
                return

    async def take_rate_token(
        self, bucket: str, limit_key: str, interval: timedelta, task_id: str, horizon: timedelta
    ) -> datetime | None:
        params = {
            "bucket": bucket,
            "lk": limit_key,
            "task": uuid_of(task_id, "task id"),
            "interval": interval.total_seconds(),
            "horizon": horizon.total_seconds(),
        }
        rows = await self._run_one(self.statements(_sql.RESERVED), params)
        if rows:
            reserved, now = utc(rows[0]["ready_at"]), utc(rows[0]["now"])
            if reserved > now:
                return reserved
            await self._run_one(self.statements(_sql.USE_RESERVED), params)
            if reserved > now - max(interval, RATE_GRACE):
                return None
            # came too late for its token (it would crowd the next ones): a new one
        take = [
            Step(self.statements(statement), params)
            for statement in (_sql.RATE_ROW, _sql.RATE_TAKE, _sql.RATE_LOOK)
        ]
        _, taken, look = await self._run(take)
        now_s = float(look[0]["now"])
        if taken:
            start_s = float(taken[0]["start"])
            if start_s <= now_s:
                return None
            params["start"] = start = datetime.fromtimestamp(start_s, UTC)
            await self._run_one(self.statements(_sql.RESERVE), params)
            return start
        # beyond the horizon: nothing reserved; when its token would be within reach
        return datetime.fromtimestamp(max(now_s, float(look[0]["look_again"])), UTC)

    async def defer_task(self, lease: Lease, visible_at: datetime, reason: str) -> None:
        params = self.statements.lease_params(lease)
        params.update(visible_at=visible_at, reason=reason[:1000])
        await self._run_one(self.statements(_sql.DEFER), params)

    async def waiting_reason(self, tenant_id: str, workflow_id: str) -> str | None:
        params = (await self._client_ops()).where(tenant_id, workflow_id)
        statement = _sql.WAITING_REASON.replace("{shard}", self.WAITING_SHARD)
        rows = await self._run_one(self.statements(statement), params, read=True)
        return None if not rows else str(rows[0]["waiting"])

    async def limit_usage(self, buckets: Sequence[str]) -> list[LimitUsage]:
        found: list[LimitUsage] = []
        for bucket in sorted(set(buckets)):
            params = {"bucket": bucket}
            steps = [
                Step(self.statements(s), params)
                for s in (_sql.USAGE_SLOTS, _sql.USAGE_WAITERS, _sql.USAGE_RATES)
            ]
            slots, waiters, rates = await self._run(steps, transaction=False, read=True)
            held = {r["limit_key"]: int(r["held"]) for r in slots}
            rows = {r["limit_key"]: int(r["slots"]) for r in slots}
            every = {
                r["limit_key"]: timedelta(seconds=r["every"])
                for r in rates
                if r["every"] is not None
            }
            waiting = {r["limit_key"]: int(r["waiting"]) for r in waiters}
            tat = {r["limit_key"]: utc(r["tat"]) for r in rates}
            for key in sorted(held.keys() | waiting.keys() | tat.keys()):
                found.append(
                    LimitUsage(
                        bucket=bucket,
                        limit_key=key,
                        held=held.get(key, 0),
                        slots=rows.get(key, 0),
                        waiting=waiting.get(key, 0),
                        next_token_at=tat.get(key),
                        every=every.get(key),
                    )
                )
        return found
