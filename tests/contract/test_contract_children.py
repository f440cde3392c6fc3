"""Contract: child workflows through the per-shard outbox, and idempotent start and
signal, end to end on every adapter (memory, PostgreSQL, Citus)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core._children import deliver, outbox_of
from flows_core.events import (
    ChildStartRequested,
    ChildWorkflowEnded,
    SignalReceived,
    WorkflowStarted,
)
from flows_core.store import OutboxRecord, Store, WorkflowStatus, WorkflowTaskCommit
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import StoreProxy
from tests.contract.test_contract_engine import eventually, result, running, worker


class Order(msgspec.Struct):
    item: str
    qty: int


class Shipped(msgspec.Struct):
    label: str


def make(ns: str) -> dict[str, Any]:
    """The workflows of one test, named under its namespace."""

    @flows.workflow(f"ship-{ns}")
    async def ship(ctx: flows.WorkflowContext, order: Order) -> Shipped:
        if order.qty <= 0:
            raise ValueError(f"cannot ship {order.qty} of {order.item}")
        return Shipped(label=f"{order.item}x{order.qty}")

    @flows.workflow(f"waiter-{ns}")
    async def waiter(ctx: flows.WorkflowContext, _: None) -> str:
        return await ctx.wait_for_signal("go", str)

    @flows.workflow(f"parent-{ns}")
    async def parent(ctx: flows.WorkflowContext, order: Order) -> str:
        shipped = await ctx.execute_child(ship, order)
        return shipped.label

    @flows.workflow(f"catcher-{ns}")
    async def catcher(ctx: flows.WorkflowContext, order: Order) -> str:
        try:
            await ctx.execute_child(ship, order)
        except flows.ChildWorkflowFailed as exc:
            return f"{type(exc).__name__}:{exc.status}:{exc.cause.type}:{exc.cause.message}"
        return "no error"

    @flows.workflow(f"handles-{ns}")
    async def handles(ctx: flows.WorkflowContext, _: None) -> list[str]:
        first = ctx.start_child(waiter, None)
        second = ctx.start_child(waiter, None, workflow_id=f"{ctx.workflow_id}-second")
        first.signal("go", "hello")
        second.cancel("not needed")
        out = [await first]
        try:
            await second.result()
        except flows.ChildWorkflowCancelled as exc:
            out.append(f"cancelled:{exc.workflow_id}")
        return out

    @flows.workflow(f"leaver-{ns}")
    async def leaver(ctx: flows.WorkflowContext, _: None) -> list[str]:
        ids = []
        for policy in ("terminate", "cancel", "abandon"):
            handle = ctx.start_child(waiter, None, parent_close_policy=policy)  # type: ignore[arg-type]
            ids.append(handle.workflow_id)
        return ids

    @flows.workflow(f"awaiter-{ns}")
    async def awaiter(ctx: flows.WorkflowContext, policy: str) -> str:
        return await ctx.execute_child(waiter, None, parent_close_policy=policy)  # type: ignore[arg-type]

    return {
        "ship": ship,
        "waiter": waiter,
        "parent": parent,
        "catcher": catcher,
        "handles": handles,
        "leaver": leaver,
        "awaiter": awaiter,
    }


def setup(
    adapter: Adapter, store: Store | None = None
) -> tuple[flows.Engine, flows.Worker, dict[str, Any], str]:
    wfs = make(adapter.ns)
    store = store or adapter.store
    engine = flows.Engine(store, workflows=list(wfs.values()))
    return engine, worker(store, workflows=list(wfs.values())), wfs, f"t-{adapter.ns}"


async def status_of(engine: flows.Engine, workflow_id: str, tenant: str) -> WorkflowStatus | None:
    """The workflow's status; None while it does not exist (its start may be on its way)."""
    try:
        return (await engine.query(workflow_id, tenant_id=tenant)).status
    except flows.WorkflowNotFound:
        return None


async def test_child_result_is_typed_and_recorded(adapter: Adapter) -> None:
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        run = await engine.start(wfs["parent"], Order("book", 2), tenant_id=tenant)
        assert await result(run) == "bookx2"
    history = await engine.history(run.workflow_id, tenant_id=tenant)
    assert_history_invariants(history)
    assert_record_matches(await adapter.store.get_workflow(tenant, run.workflow_id), history)
    (started,) = [e for e in history if isinstance(e, ChildStartRequested)]
    assert started.workflow_id == f"{run.workflow_id}/child-1"
    (ended,) = [e for e in history if isinstance(e, ChildWorkflowEnded)]
    assert (ended.seq, ended.status) == (1, "completed")
    child = await engine.history(started.workflow_id, tenant_id=tenant)
    first = child[0]
    assert isinstance(first, WorkflowStarted)
    assert first.parent is not None
    assert (first.parent.workflow_id, first.parent.seq) == (run.workflow_id, 1)
    info = await engine.query(started.workflow_id, tenant_id=tenant)
    assert info.status == WorkflowStatus.COMPLETED
    assert info.output == {"label": "bookx2"}


async def test_child_failure_raises_typed_error_with_cause(adapter: Adapter) -> None:
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        run = await engine.start(wfs["catcher"], Order("book", 0), tenant_id=tenant)
        out = await result(run)
    assert out == "ChildWorkflowFailed:failed:ValueError:cannot ship 0 of book"


async def test_child_handle_signal_and_cancel(adapter: Adapter) -> None:
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        run = await engine.start(wfs["handles"], None, tenant_id=tenant)
        out = await result(run)
    second = f"{run.workflow_id}-second"
    assert out == ["hello", f"cancelled:{second}"]
    await eventually(
        lambda: status_of(engine, second, tenant), lambda s: s == WorkflowStatus.CANCELLED
    )
    first = await engine.history(f"{run.workflow_id}/child-1", tenant_id=tenant)
    signals = [e for e in first if isinstance(e, SignalReceived)]
    assert [s.name for s in signals] == ["go"]


async def test_parent_close_policies(adapter: Adapter) -> None:
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        run = await engine.start(wfs["leaver"], None, tenant_id=tenant)
        terminated, cancelled, abandoned = await result(run)
        await eventually(
            lambda: status_of(engine, cancelled, tenant), lambda s: s == WorkflowStatus.CANCELLED
        )
        await eventually(
            lambda: status_of(engine, terminated, tenant),
            lambda s: s == WorkflowStatus.TERMINATED,
        )
        await eventually(
            lambda: status_of(engine, abandoned, tenant), lambda s: s == WorkflowStatus.RUNNING
        )
        await engine.signal(abandoned, "go", "still here", tenant_id=tenant)
        assert await engine.wait_for_result(abandoned, tenant_id=tenant, timeout=10) == "still here"


@pytest.mark.parametrize(
    ("policy", "child_status"),
    [
        ("cancel", WorkflowStatus.CANCELLED),
        ("terminate", WorkflowStatus.TERMINATED),
        ("abandon", WorkflowStatus.RUNNING),
    ],
)
async def test_cancelling_the_parent_propagates_per_policy(
    adapter: Adapter, policy: str, child_status: WorkflowStatus
) -> None:
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        run = await engine.start(wfs["awaiter"], policy, tenant_id=tenant)
        child = f"{run.workflow_id}/child-1"
        await eventually(
            lambda: engine.list(tenant_id=tenant, id_prefix=child),
            lambda found: len(found) == 1,
        )
        await engine.cancel(run.workflow_id, tenant_id=tenant)
        with pytest.raises(flows.WorkflowCancelled):
            await result(run)
        await eventually(lambda: status_of(engine, child, tenant), lambda s: s == child_status)


class CrashBeforeCommit(StoreProxy):
    """The parent's first commit that starts a child never happens (its worker dies
    after deciding it): the task is retried, and the child is started once."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.crashed = 0

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Any]:
        if commit.outbox and not self.crashed:
            self.crashed += 1
            raise RuntimeError("worker died before its commit")
        return await self._store.commit_workflow_task(commit)


async def test_child_started_once_when_parent_task_is_retried(adapter: Adapter) -> None:
    store = CrashBeforeCommit(adapter.store)
    engine, _, wfs, tenant = setup(adapter, store)  # type: ignore[arg-type]
    w = worker(store, workflows=list(wfs.values()), workflow_task_backoff=flows_backoff())
    async with running(w):
        run = await engine.start(wfs["parent"], Order("pen", 3), tenant_id=tenant)
        assert await result(run) == "penx3"
    assert store.crashed == 1
    children = await engine.list(tenant_id=tenant, name=f"ship-{adapter.ns}")
    assert [c.workflow_id for c in children] == [f"{run.workflow_id}/child-1"]


def flows_backoff() -> Any:
    from datetime import timedelta

    return timedelta(milliseconds=10)


async def test_outbox_delivery_repeated_changes_nothing(adapter: Adapter) -> None:
    """Every outbox message (child start, completion notice) delivered a second time:
    still one child, one ChildWorkflowEnded in the parent."""
    captured: list[OutboxRecord] = []

    class Capture(StoreProxy):
        async def delete_outbox(self, records: list[OutboxRecord]) -> None:
            captured.extend(records)
            await self._store.delete_outbox(records)  # type: ignore[attr-defined]

    store = Capture(adapter.store)
    engine, _, wfs, tenant = setup(adapter, store)  # type: ignore[arg-type]
    w = worker(store, workflows=list(wfs.values()))
    async with running(w):
        run = await engine.start(wfs["parent"], Order("cup", 1), tenant_id=tenant)
        assert await result(run) == "cupx1"
    assert len(captured) == 2  # the start, the completion notice
    outbox = outbox_of(adapter.store)
    assert outbox is not None
    for record in captured:
        await deliver(adapter.store, outbox, record)
    history = await engine.history(run.workflow_id, tenant_id=tenant)
    assert len([e for e in history if isinstance(e, ChildWorkflowEnded)]) == 1
    record = await adapter.store.get_workflow(tenant, run.workflow_id)
    assert record.inbox_length == 0
    children = await engine.list(tenant_id=tenant, name=f"ship-{adapter.ns}")
    assert len(children) == 1


async def test_child_id_taken_by_another_workflow_fails_the_child(adapter: Adapter) -> None:
    ns = adapter.ns
    wfs = make(ns)

    @flows.workflow(f"named-{ns}")
    async def named(ctx: flows.WorkflowContext, _: None) -> str:
        try:
            await ctx.execute_child(wfs["ship"], Order("x", 1), workflow_id=f"taken-{ns}")
        except flows.ChildWorkflowFailed as exc:
            return exc.cause.type
        return "started"

    tenant = f"t-{ns}"
    engine = flows.Engine(adapter.store, workflows=[*wfs.values(), named])
    await engine.start(wfs["waiter"], None, tenant_id=tenant, workflow_id=f"taken-{ns}")
    async with running(worker(adapter.store, workflows=[*wfs.values(), named])):
        run = await engine.start(named, None, tenant_id=tenant)
        assert await result(run) == "ChildWorkflowAlreadyExists"


# -- idempotency --


async def test_start_if_exists_return(adapter: Adapter) -> None:
    wfs = make(adapter.ns)
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=list(wfs.values()))
    first = await engine.start(wfs["waiter"], None, tenant_id=tenant, workflow_id="once")
    with pytest.raises(flows.WorkflowAlreadyExists):
        await engine.start(wfs["waiter"], None, tenant_id=tenant, workflow_id="once")
    again = await engine.start(
        wfs["waiter"], None, tenant_id=tenant, workflow_id="once", if_exists="return"
    )
    assert (again.workflow_id, again.tenant_id) == (first.workflow_id, first.tenant_id)
    assert len(await engine.list(tenant_id=tenant)) == 1
    with pytest.raises(flows.WorkflowAlreadyExists, match="already exists as a"):
        await engine.start(
            wfs["ship"], Order("a", 1), tenant_id=tenant, workflow_id="once", if_exists="return"
        )
    with pytest.raises(flows.InvalidArgument, match="if_exists"):
        await engine.start(wfs["waiter"], None, tenant_id=tenant, if_exists="maybe")  # type: ignore[arg-type]


async def test_signal_idempotency_key_delivers_once(adapter: Adapter) -> None:
    wfs = make(adapter.ns)
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=list(wfs.values()))
    run = await engine.start(wfs["waiter"], None, tenant_id=tenant)
    assert await engine.signal(run.workflow_id, "go", "a", tenant_id=tenant, idempotency_key="k1")
    assert not await engine.signal(
        run.workflow_id, "go", "b", tenant_id=tenant, idempotency_key="k1"
    )
    record = await adapter.store.get_workflow(tenant, run.workflow_id)
    assert record.inbox_length == 1
    async with running(worker(adapter.store, workflows=list(wfs.values()))):
        assert await result(run) == "a"
    # after the end: a repeat is still no error, a new key is
    assert not await engine.signal(
        run.workflow_id, "go", "c", tenant_id=tenant, idempotency_key="k1"
    )
    with pytest.raises(flows.WorkflowNotRunning):
        await engine.signal(run.workflow_id, "go", "d", tenant_id=tenant, idempotency_key="k2")
    other = await engine.start(wfs["waiter"], None, tenant_id=tenant)
    assert await engine.signal(other.workflow_id, "go", "x", tenant_id=tenant, idempotency_key="k1")
    with pytest.raises(flows.WorkflowNotFound):
        await engine.signal("missing", "go", "x", tenant_id=tenant, idempotency_key="k9")


async def test_terminating_a_child_fails_its_parent_and_a_parent_closes_its_children(
    adapter: Adapter,
) -> None:
    """Ended from outside (terminate): a child's parent is told (ChildWorkflowFailed,
    status terminated); a parent's open children get its parent-close policy."""
    engine, w, wfs, tenant = setup(adapter)
    async with running(w):
        waiting = await engine.start(wfs["awaiter"], "cancel", tenant_id=tenant)
        child = f"{waiting.workflow_id}/child-1"
        await eventually(lambda: status_of(engine, child, tenant), lambda s: s is not None)
        await engine.terminate(child, reason="ops", tenant_id=tenant)
        with pytest.raises(flows.WorkflowFailed, match="ChildWorkflowFailed"):
            await result(waiting)
        parent = await engine.start(wfs["awaiter"], "terminate", tenant_id=tenant)
        child = f"{parent.workflow_id}/child-1"
        await eventually(lambda: status_of(engine, child, tenant), lambda s: s is not None)
        await engine.terminate(parent.workflow_id, reason="ops", tenant_id=tenant)
        await eventually(
            lambda: status_of(engine, child, tenant), lambda s: s == WorkflowStatus.TERMINATED
        )
    history = await engine.history(waiting.workflow_id, tenant_id=tenant)
    (ended,) = [e for e in history if isinstance(e, ChildWorkflowEnded)]
    assert ended.status == "terminated"
    assert ended.error is not None
    assert ended.error.type == "WorkflowTerminated"


async def test_idempotency_keys_are_kept_until_prune_passes_their_age(adapter: Adapter) -> None:
    """The dedup window: a key is remembered until a prune whose age it has passed."""
    from datetime import timedelta

    wfs = make(adapter.ns)
    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=list(wfs.values()))
    run = await engine.start(wfs["waiter"], None, tenant_id=tenant)
    assert await engine.signal(run.workflow_id, "go", "a", tenant_id=tenant, idempotency_key="k")
    await engine.prune(timedelta(hours=1))
    assert not await engine.signal(
        run.workflow_id, "go", "b", tenant_id=tenant, idempotency_key="k"
    )
    await adapter.pass_time(0.05)
    await engine.prune(timedelta(0))
    assert await engine.signal(run.workflow_id, "go", "c", tenant_id=tenant, idempotency_key="k")


async def test_a_child_that_continues_as_new_reports_its_last_run_to_the_parent(
    adapter: Adapter,
) -> None:
    """The next run keeps the parent link (WorkflowStarted.parent): the parent gets the
    result of the child's last run, and only that run tells it."""

    @flows.workflow(f"counting-child-{adapter.ns}")
    async def counting(ctx: flows.WorkflowContext, n: int) -> int:
        if n < 3:
            ctx.continue_as_new(n + 1)
        return n * 10

    @flows.workflow(f"counting-parent-{adapter.ns}")
    async def parent(ctx: flows.WorkflowContext, n: int) -> int:
        return await ctx.execute_child(counting, n)

    tenant = f"t-{adapter.ns}"
    engine = flows.Engine(adapter.store, workflows=[counting, parent])
    async with running(worker(adapter.store, workflows=[counting, parent])):
        run = await engine.start(parent, 1, tenant_id=tenant)
        assert await result(run) == 30
    child_id = f"{run.workflow_id}/child-1"
    assert [r.run_number for r in await engine.runs(child_id, tenant_id=tenant)] == [1, 2, 3]
    last = (await engine.history(child_id, tenant_id=tenant))[0]
    assert isinstance(last, WorkflowStarted)
    assert last.run_number == 3
    assert last.parent is not None
    assert last.parent.workflow_id == run.workflow_id
    ended = [
        e
        for e in await engine.history(run.workflow_id, tenant_id=tenant)
        if isinstance(e, ChildWorkflowEnded)
    ]
    assert len(ended) == 1
