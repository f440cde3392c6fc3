"""``flows fsck`` on every adapter: a healthy store reports nothing; each kind of damage,
planted straight into the store (raw SQL through the store's pool on PostgreSQL and
Citus, the MemoryStore's internals), is named on the workflow it was planted on."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from flows_core._fsck import FsckReport, fsck
from flows_core.events import (
    ActivityCompleted,
    ActivityScheduled,
    Event,
    SignalWaitStarted,
    TimerStarted,
    WorkflowCompleted,
    WorkflowTerminatedEvent,
)
from flows_core.store import (
    ActivityTaskSpec,
    Store,
    TimerTaskSpec,
    WorkerInfo,
    WorkflowStatus,
    round_trip_event,
    stored_event,
)
from flows_memory import MemoryStore
from tests.contract.adapters import Adapter
from tests.contract.kit import LONG, Kit, raw


@dataclass
class Healthy:
    """Four workflows in every legitimate resting state: ``waiting`` has an activity
    task and a timer, ``signal`` waits for a signal (no task), ``done`` completed,
    ``fresh`` has its first workflow task pending."""

    waiting: str
    signal: str
    done: str
    fresh: str


async def healthy(kit: Kit) -> Healthy:
    now = kit.now
    waiting = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [
                ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=now()),
                TimerStarted(seq=2, fire_at=now() + LONG, at=now()),
            ],
            next_seq=3,
            activity_tasks=[ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))],
            timers=[TimerTaskSpec(seq=2, fire_at=now() + LONG)],
        )
    )
    signal = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(
        kit.commit(claim, [SignalWaitStarted(seq=1, name="go", at=now())], next_seq=2)
    )
    done = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw("ok"), at=now())],
            status=WorkflowStatus.COMPLETED,
            output="ok",
        )
    )
    fresh = await kit.start()
    return Healthy(waiting.workflow_id, signal.workflow_id, done.workflow_id, fresh.workflow_id)


class Planter:
    """Writes damage straight into the store, around its protocol."""

    def __init__(self, kit: Kit) -> None:
        self.kit = kit
        self.store: Store = kit.store
        self.memory = self.store if isinstance(self.store, MemoryStore) else None

    async def sql(self, statement: str, **params: Any) -> None:
        pool = self.store.pool  # type: ignore[attr-defined]
        text = statement.replace("{S}", self.store.statements.ident)  # type: ignore[attr-defined]
        async with pool.connection() as conn:
            await conn.execute(text, params)

    def _wf(self, workflow_id: str) -> Any:
        assert self.memory is not None
        return self.memory._workflows[(self.kit.tenant, workflow_id)]

    async def append(self, workflow_id: str, event: Event) -> None:
        """Add ``event`` at the end of the history (the row's length follows)."""
        if self.memory is not None:
            self._wf(workflow_id).history.append(round_trip_event(event))
            return
        await self.sql(
            """
            WITH w AS (
              UPDATE {S}.workflows SET history_length = history_length + 1
              WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s
              RETURNING shard_key, tenant_id, workflow_id, history_length)
            INSERT INTO {S}.history (shard_key, tenant_id, workflow_id, position, event)
            SELECT shard_key, tenant_id, workflow_id, history_length, %(event)s::json FROM w
            """,
            tid=self.kit.tenant,
            wid=workflow_id,
            event=stored_event(event),
        )

    async def set_row(self, workflow_id: str, **values: Any) -> None:
        if self.memory is not None:
            wf = self._wf(workflow_id)
            for name, value in values.items():
                setattr(wf, name, value)
            return
        columns = ", ".join(f"{name} = %({name})s" for name in values)
        await self.sql(
            f"UPDATE {{S}}.workflows SET {columns} WHERE tenant_id = %(tid)s "
            "AND workflow_id = %(wid)s",
            tid=self.kit.tenant,
            wid=workflow_id,
            **{k: str(v) if isinstance(v, WorkflowStatus) else v for k, v in values.items()},
        )

    async def delete_tasks(self, workflow_id: str) -> None:
        if self.memory is not None:
            wf = self._wf(workflow_id)
            for task in [*wf.step_tasks.values(), wf.workflow_task]:
                if task is not None:
                    self.memory._delete(task)
            wf.step_tasks.clear()
            wf.workflow_task = None
            return
        await self.sql(
            "DELETE FROM {S}.tasks WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s",
            tid=self.kit.tenant,
            wid=workflow_id,
        )

    async def delete_row(self, workflow_id: str) -> None:
        """Delete the workflow row only: its history, inbox and tasks stay."""
        if self.memory is not None:
            del self.memory._workflows[(self.kit.tenant, workflow_id)]
            return
        await self.sql(
            "DELETE FROM {S}.workflows WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s",
            tid=self.kit.tenant,
            wid=workflow_id,
        )


Plant = Callable[[Planter, Healthy, Adapter], Awaitable[str]]
"""Plants one kind of damage; returns the id of the workflow fsck must name."""


async def duplicate_seq(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.append(h.waiting, ActivityScheduled(seq=1, name="x", input=raw(1), at=p.kit.now()))
    return h.waiting


async def double_resolution(p: Planter, h: Healthy, a: Adapter) -> str:
    for _ in range(2):
        await p.append(h.waiting, ActivityCompleted(seq=1, output=raw(2), at=p.kit.now()))
    return h.waiting


async def unscheduled_resolution(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.append(h.waiting, ActivityCompleted(seq=9, output=raw(2), at=p.kit.now()))
    return h.waiting


async def seq_gap(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.append(h.waiting, TimerStarted(seq=5, fire_at=p.kit.now(), at=p.kit.now()))
    return h.waiting


async def history_gap(p: Planter, h: Healthy, a: Adapter) -> str:
    if p.memory is not None:
        pytest.skip("MemoryStore keeps a history as a list: its positions cannot have gaps")
    await p.sql(
        "DELETE FROM {S}.history WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s "
        "AND position = 2",
        tid=p.kit.tenant,
        wid=h.waiting,
    )
    return h.waiting


async def undecodable_history(p: Planter, h: Healthy, a: Adapter) -> str:
    if p.memory is not None:
        pytest.skip("MemoryStore keeps decoded events: nothing stored can fail to decode")
    await p.sql(
        'UPDATE {S}.history SET event = \'{"type": "no_such_event"}\' '
        "WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s AND position = 2",
        tid=p.kit.tenant,
        wid=h.waiting,
    )
    return h.waiting


async def cached_state(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.set_row(h.waiting, next_seq=7)
    return h.waiting


async def terminal_tasks(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.append(h.waiting, WorkflowCompleted(output=raw("x"), at=p.kit.now()))
    await p.set_row(h.waiting, status=WorkflowStatus.COMPLETED)
    return h.waiting


async def expired_lease(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.kit.claim_wf(lease=timedelta(seconds=0.1), owner="ghost")
    await a.pass_time(0.5)
    return h.fresh


async def orphan_inbox_terminated(p: Planter, h: Healthy, a: Adapter) -> str:
    terminated = WorkflowTerminatedEvent(reason="test", at=p.kit.now())
    await p.store.terminate_workflow(p.kit.tenant, h.signal, terminated)
    signal = p.kit.signal("late")
    if p.memory is not None:
        p._wf(h.signal).inbox.append(round_trip_event(signal))
    else:
        await p.sql(
            """
            WITH w AS (
              UPDATE {S}.workflows SET inbox_length = inbox_length + 1,
                inbox_seq = inbox_seq + 1
              WHERE tenant_id = %(tid)s AND workflow_id = %(wid)s
              RETURNING shard_key, tenant_id, workflow_id, inbox_seq)
            INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event)
            SELECT shard_key, tenant_id, workflow_id, inbox_seq, %(event)s::json FROM w
            """,
            tid=p.kit.tenant,
            wid=h.signal,
            event=stored_event(signal),
        )
    return h.signal


async def orphan_inbox_missing(p: Planter, h: Healthy, a: Adapter) -> str:
    if p.memory is not None:
        pytest.skip("MemoryStore keeps the inbox inside the workflow: it cannot be orphaned")
    await p.sql(
        "INSERT INTO {S}.inbox (shard_key, tenant_id, workflow_id, inbox_seq, event) "
        "VALUES (%(sk)s, %(tid)s, 'ghost', 1, %(event)s::json)",
        sk=p.kit.shard,
        tid=p.kit.tenant,
        event=stored_event(p.kit.signal()),
    )
    return "ghost"


async def orphan_task(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.delete_row(h.fresh)
    return h.fresh


async def stuck(p: Planter, h: Healthy, a: Adapter) -> str:
    await p.delete_tasks(h.waiting)
    return h.waiting


DAMAGE: dict[str, Plant] = {
    "duplicate-seq": duplicate_seq,
    "double-resolution": double_resolution,
    "unscheduled-resolution": unscheduled_resolution,
    "seq-gap": seq_gap,
    "history-gap": history_gap,
    "undecodable-history": undecodable_history,
    "cached-state": cached_state,
    "terminal-tasks": terminal_tasks,
    "expired-lease": expired_lease,
    "orphan-inbox": orphan_inbox_terminated,
    "orphan-inbox-missing": orphan_inbox_missing,
    "orphan-task": orphan_task,
    "stuck": stuck,
}


async def check(store: Store, kit: Kit) -> FsckReport:
    return await fsck(store, tenant_id=kit.tenant, lease=timedelta(seconds=0.1), lease_periods=2)


async def test_a_healthy_store_reports_nothing(adapter: Adapter) -> None:
    kit = Kit(adapter)
    await healthy(kit)
    # a live worker's lease, however old, is not damage
    await adapter.store.register_worker(
        WorkerInfo(worker_id="alive", workflow_types=[], activity_names=[], heartbeat_at=kit.now())
    )
    await kit.claim_wf(lease=timedelta(seconds=0.1), owner="alive")
    await adapter.pass_time(0.5)
    await adapter.store.register_worker(
        WorkerInfo(worker_id="alive", workflow_types=[], activity_names=[], heartbeat_at=kit.now())
    )
    report = await check(adapter.store, kit)
    assert report.findings == []
    assert report.workflows == 4
    assert report.ok


@pytest.mark.parametrize("damage", list(DAMAGE))
async def test_planted_damage_is_named(adapter: Adapter, damage: str) -> None:
    kit = Kit(adapter)
    made = await healthy(kit)
    workflow_id = await DAMAGE[damage](Planter(kit), made, adapter)
    report = await check(adapter.store, kit)
    kind = damage.removesuffix("-missing")
    named = [f for f in report.findings if f.workflow_id == workflow_id and f.kind == kind]
    assert named, f"fsck did not name {kind} on {workflow_id}: {report.findings}"
    assert not report.ok
    assert kind in report.summary()
    # the other workflows are still healthy
    healthy_ids = {made.waiting, made.signal, made.done, made.fresh} - {workflow_id}
    assert [f for f in report.findings if f.workflow_id in healthy_ids] == []


async def test_tenant_and_limit(adapter: Adapter) -> None:
    kit = Kit(adapter)
    made = await healthy(kit)
    await Planter(kit).delete_tasks(made.waiting)
    elsewhere = await fsck(adapter.store, tenant_id=kit.other_tenant)
    assert elsewhere.workflows == 0
    assert elsewhere.ok
    pages = await fsck(adapter.store, tenant_id=kit.tenant, page=1)
    assert pages.workflows == 4
    assert [f.kind for f in pages.findings] == ["stuck"]
    limited = await fsck(adapter.store, tenant_id=kit.tenant, limit=2, page=1)
    assert limited.workflows == 2
