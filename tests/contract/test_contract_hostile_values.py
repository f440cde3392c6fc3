"""Hostile values get the same outcome on every store: kept exactly, or refused with a
Flows error before anything is written. Never a raw driver error, never a silent change.

What PostgreSQL cannot keep, and so no store keeps (``flows_core.store.stored_*``):

* a lone surrogate in any string (it has no UTF-8 encoding): PayloadError in events,
  errors and payloads, InvalidArgument in ids and names;
* NUL (``\\x00``) in a text column (ids, names): InvalidArgument. Inside JSON values
  (payloads, signal names, reasons, error messages) NUL is an escape and round-trips;
* a payload that is not valid UTF-8 JSON (NaN, truncated, bad bytes): PayloadError.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import msgspec
import pytest

import flows_core as flows
from flows_core import ErrorInfo, WorkflowStatus
from flows_core.events import (
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    SignalReceived,
    WorkflowFailedEvent,
    WorkflowTerminatedEvent,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskSpec,
    ListQuery,
    WorkflowTaskClaim,
)
from tests.contract.adapters import Adapter
from tests.contract.kit import Kit, raw
from tests.contract.test_contract_engine import result, running, worker

SURROGATE = "path /tmp/\udcff.txt"
NUL = "a\x00b"
HUGE = "x" * 3_000_000
ODD_IDS = ["ﬀ\u0301e\u0301", "😀" * 40, "é" * 200, "ج-ö-漢字", "%(tid)s'; --", "a\\b"]
BAD_IDS = ["a\x00b", "\x00", "\ud800", "a\udfffb"]


def error(message: str) -> ErrorInfo:
    return ErrorInfo(type="OSError", message=message, attempts=1)


async def scheduled(kit: Kit) -> tuple[str, WorkflowTaskClaim]:
    """A workflow with activity step #1 queued, and its workflow task claimed again."""
    new = await kit.start()
    claim = await kit.claim_wf()
    spec = ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))
    event = ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=kit.now())
    await kit.store.commit_workflow_task(
        kit.commit(claim, [event], next_seq=2, activity_tasks=[spec])
    )
    return new.workflow_id, claim


# -- store level: what is kept exactly --


async def test_nul_in_json_values_round_trips(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start(input={"s": NUL})
    signal = SignalReceived(name=NUL, payload=raw([NUL]), signal_id=f"s-{kit.ns}", at=kit.now())
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, signal)
    request = CancelRequested(reason=NUL, at=kit.now())
    await kit.store.cancel_workflow(kit.tenant, new.workflow_id, request)
    history = await kit.flushed_history(new.workflow_id)
    assert msgspec.json.decode(history[0].input) == {"s": NUL}  # type: ignore[union-attr]
    assert history[1] == signal
    assert history[2] == request
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert msgspec.json.decode(record.input) == {"s": NUL}
    reason = WorkflowTerminatedEvent(reason=NUL, at=kit.now())
    await kit.store.terminate_workflow(kit.tenant, new.workflow_id, reason)
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.error is not None
    assert record.error.message == NUL
    assert (await kit.store.get_history(kit.tenant, new.workflow_id))[-1] == reason

    workflow_id, _ = await scheduled(kit)
    act = await kit.claim_act()
    failed = ActivityFailedEvent(seq=1, error=error(NUL + HUGE), at=kit.now())
    await kit.store.complete_activity(ActivityResult(lease=act.lease, event=failed))
    claim = await kit.claim_wf()
    assert claim.history[-1] == failed, "a NUL and a 3 MB message are kept exactly"
    end = WorkflowFailedEvent(error=error(NUL), at=kit.now())
    await kit.store.commit_workflow_task(
        kit.commit(claim, [end], status=WorkflowStatus.FAILED, error=end.error)
    )
    record = await kit.store.get_workflow(kit.tenant, workflow_id)
    assert record.error == error(NUL)


@pytest.mark.parametrize("workflow_id", ODD_IDS)
async def test_odd_unicode_ids_round_trip(kit: Kit, workflow_id: str) -> None:
    tenant = f"{kit.tenant}-{workflow_id[:20]}"
    new = await kit.start(workflow_id, tenant=tenant)
    record = await kit.store.get_workflow(tenant, workflow_id)
    assert (record.tenant_id, record.workflow_id) == (tenant, workflow_id)
    history = await kit.store.get_history(tenant, workflow_id)
    assert history == [new.started]
    with pytest.raises(flows.WorkflowNotFound):
        await kit.store.get_workflow(kit.tenant, workflow_id)


# -- store level: what is refused, with nothing written --


@pytest.mark.parametrize("bad", BAD_IDS)
async def test_ids_a_store_cannot_keep_are_invalid(kit: Kit, bad: str) -> None:
    with pytest.raises(flows.InvalidArgument):
        await kit.start(bad)
    with pytest.raises(flows.InvalidArgument):
        await kit.start(tenant=bad)
    with pytest.raises(flows.InvalidArgument):
        await kit.store.get_workflow(kit.tenant, bad)
    with pytest.raises(flows.InvalidArgument):
        await kit.store.get_workflow(bad, "w")
    with pytest.raises(flows.InvalidArgument):
        await kit.store.get_history(kit.tenant, bad)
    with pytest.raises(flows.InvalidArgument):
        await kit.store.list_workflows(ListQuery(tenant_id=bad))
    with pytest.raises(flows.InvalidArgument):
        await kit.store.list_workflows(ListQuery(tenant_id=kit.tenant, name=bad))


@pytest.mark.parametrize(
    "payload",
    [b'{"x": NaN}', b'{"x": Infinity}', b'{"x": 1', b'"\xff\xfe"', b'"\\ud800"', b""],
    ids=["nan", "infinity", "truncated", "not-utf8", "lone-surrogate-escape", "empty"],
)
async def test_payloads_that_are_not_valid_json_are_refused(kit: Kit, payload: bytes) -> None:
    new = kit.new()
    bad = msgspec.structs.replace(
        new,
        input=msgspec.Raw(payload),
        started=msgspec.structs.replace(new.started, input=msgspec.Raw(payload)),  # type: ignore[type-var]
    )
    with pytest.raises(flows.PayloadError):
        await kit.store.start_workflow(bad)
    with pytest.raises(flows.WorkflowNotFound):
        await kit.store.get_workflow(kit.tenant, new.workflow_id)

    good = await kit.start()
    signal = SignalReceived(
        name="go", payload=msgspec.Raw(payload), signal_id=f"s-{kit.ns}", at=kit.now()
    )
    with pytest.raises(flows.PayloadError):
        await kit.store.signal_workflow(kit.tenant, good.workflow_id, signal)
    assert (await kit.store.get_workflow(kit.tenant, good.workflow_id)).inbox_length == 0


async def test_lone_surrogates_in_client_writes_are_refused(kit: Kit) -> None:
    new = await kit.start()
    signal = SignalReceived(name=SURROGATE, payload=raw(1), signal_id=f"s-{kit.ns}", at=kit.now())
    with pytest.raises(flows.PayloadError):
        await kit.store.signal_workflow(kit.tenant, new.workflow_id, signal)
    with pytest.raises(flows.PayloadError):
        await kit.store.cancel_workflow(
            kit.tenant, new.workflow_id, CancelRequested(reason=SURROGATE, at=kit.now())
        )
    with pytest.raises(flows.PayloadError):
        await kit.store.terminate_workflow(
            kit.tenant, new.workflow_id, WorkflowTerminatedEvent(reason=SURROGATE, at=kit.now())
        )
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.inbox_length == 0
    assert not record.cancel_requested
    assert record.history_length == 1


async def test_lone_surrogates_in_worker_writes_are_refused(kit: Kit) -> None:
    workflow_id, _ = await scheduled(kit)
    act = await kit.claim_act()
    bad = error(SURROGATE)
    failed = ActivityFailedEvent(seq=1, error=bad, at=kit.now())
    with pytest.raises(flows.PayloadError):
        await kit.store.complete_activity(ActivityResult(lease=act.lease, event=failed))
    retry = ActivityRetry(lease=act.lease, next_attempt=2, visible_at=kit.now(), error=bad)
    with pytest.raises(flows.PayloadError):
        await kit.store.retry_activity(retry)
    # nothing was written: the lease still holds, the result is not in the inbox
    await kit.store.heartbeat(act.lease, timedelta(seconds=30))
    record = await kit.store.get_workflow(kit.tenant, workflow_id)
    assert record.inbox_length == 0

    new = await kit.start()
    claims = await kit.claim(limit=10)
    claim = next(c for c in claims if c.lease.workflow_id == new.workflow_id)
    assert isinstance(claim, WorkflowTaskClaim)
    end = WorkflowFailedEvent(error=bad, at=kit.now())
    with pytest.raises(flows.PayloadError):
        await kit.store.commit_workflow_task(
            kit.commit(claim, [end], status=WorkflowStatus.FAILED, error=bad)
        )
    with pytest.raises(flows.PayloadError):
        await kit.store.park_workflow(claim.lease, bad)
    with pytest.raises(flows.PayloadError):
        await kit.store.fail_workflow_task(claim.lease, bad, kit.now())
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert record.history_length == 1
    assert record.error is None
    # the claimant can still commit something storable under the same lease
    await kit.store.commit_workflow_task(kit.commit(claim, []))


# -- through the Engine and a Worker --

FAST = flows.RetryPolicy(initial_interval=timedelta(0), max_attempts=2, jitter=0.0)


def tenant_of(adapter: Adapter) -> str:
    return f"t-{adapter.ns}"


async def ended(engine: flows.Engine, run: flows.Run[Any]) -> flows.WorkflowInfo:
    """The workflow's info once it left RUNNING (a bounded wait: never a hang)."""
    for _ in range(1000):
        info = await engine.query(run.workflow_id, tenant_id=run.tenant_id)
        if info.status != WorkflowStatus.RUNNING:
            return info
        await asyncio.sleep(0.01)
    raise AssertionError(f"workflow {run.workflow_id} still running: {info}")


async def test_engine_nul_values_round_trip(adapter: Adapter) -> None:
    @flows.workflow(name=f"nul-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, text: str) -> list[str]:
        got = await ctx.wait_for_signal("go", str)
        return [text, got]

    engine = flows.Engine(adapter.store, workflows=[wf])
    tenant = tenant_of(adapter)
    async with running(worker(adapter.store, workflows=[wf])):
        run = await engine.start(wf, NUL, tenant_id=tenant)
        await engine.signal(run.workflow_id, "go", NUL + HUGE[:1000], tenant_id=tenant)
        assert await result(run) == [NUL, NUL + HUGE[:1000]]


async def test_engine_refuses_what_no_store_keeps_and_writes_nothing(adapter: Adapter) -> None:
    @flows.workflow(name=f"refuse-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, text: str) -> str:
        return await ctx.wait_for_signal("go", str)

    engine = flows.Engine(adapter.store, workflows=[wf])
    tenant = tenant_of(adapter)
    with pytest.raises(flows.PayloadError):
        await engine.start(wf, SURROGATE, tenant_id=tenant)
    for bad in BAD_IDS:
        with pytest.raises(flows.InvalidArgument):
            await engine.start(wf, "x", tenant_id=tenant, workflow_id=bad)
        with pytest.raises(flows.InvalidArgument):
            await engine.start(wf, "x", tenant_id=bad)
    run = await engine.start(wf, "x", tenant_id=tenant)
    with pytest.raises(flows.PayloadError):
        await engine.signal(run.workflow_id, "go", SURROGATE, tenant_id=tenant)
    for name in (NUL, SURROGATE):
        with pytest.raises(flows.InvalidArgument):
            await engine.signal(run.workflow_id, name, "x", tenant_id=tenant)
    with pytest.raises(flows.InvalidArgument):
        await engine.cancel(run.workflow_id, reason=SURROGATE, tenant_id=tenant)
    with pytest.raises(flows.InvalidArgument):
        await engine.terminate(run.workflow_id, reason=SURROGATE, tenant_id=tenant)
    info = await engine.query(run.workflow_id, tenant_id=tenant)
    assert info.status == WorkflowStatus.RUNNING
    assert len(await engine.history(run.workflow_id, tenant_id=tenant)) == 1


async def test_engine_output_with_a_lone_surrogate_is_a_payload_error(adapter: Adapter) -> None:
    @flows.workflow(name=f"out-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, text: str) -> str:
        return SURROGATE

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf])):
        run = await engine.start(wf, "x", tenant_id=tenant_of(adapter))
        info = await ended(engine, run)
    assert info.status in (WorkflowStatus.FAILED, WorkflowStatus.PARKED)
    assert info.error is not None
    assert info.error.type == "PayloadError"


async def test_engine_activity_error_with_a_lone_surrogate_is_recorded(adapter: Adapter) -> None:
    runs: list[int] = []

    @flows.activity(name=f"fs-{adapter.ns}", retry=FAST)
    async def touch(n: int) -> None:
        runs.append(n)
        raise OSError(SURROGATE)

    @flows.workflow(name=f"fs-wf-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> None:
        await ctx.execute(touch, n)

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf], activities=[touch])):
        run = await engine.start(wf, 1, tenant_id=tenant_of(adapter))
        info = await ended(engine, run)
    assert info.status == WorkflowStatus.FAILED
    assert info.error is not None
    assert info.error.type == "OSError"
    assert info.error.message.startswith("path /tmp/")
    info.error.message.encode()  # storable text: the surrogate was replaced
    assert runs == [1, 1], "every execution is a counted attempt: exactly max_attempts"


async def test_engine_huge_activity_error_is_recorded_once(adapter: Adapter) -> None:
    runs: list[int] = []

    @flows.activity(name=f"huge-{adapter.ns}", retry=FAST)
    async def shout(n: int) -> None:
        runs.append(n)
        raise flows.TerminalError(HUGE)

    @flows.workflow(name=f"huge-wf-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> None:
        await ctx.execute(shout, n)

    engine = flows.Engine(adapter.store, workflows=[wf])
    async with running(worker(adapter.store, workflows=[wf], activities=[shout])):
        run = await engine.start(wf, 1, tenant_id=tenant_of(adapter))
        info = await ended(engine, run)
    assert info.status == WorkflowStatus.FAILED
    assert info.error is not None
    assert info.error.message.startswith("x" * 1000)
    assert len(info.error.message) <= len(HUGE) + 100
    assert runs == [1]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
async def test_engine_nan_and_inf_never_become_null(adapter: Adapter, value: float) -> None:
    @flows.activity(name=f"nan-{adapter.ns}")
    async def produce(n: int) -> float:
        return value

    @flows.workflow(name=f"nan-wf-{adapter.ns}")
    async def wf(ctx: flows.WorkflowContext, n: int) -> str:
        try:
            got = await ctx.execute(produce, n)
        except flows.ActivityFailed as exc:
            return f"failed:{exc.error_type}"
        return f"value:{got!r}"

    engine = flows.Engine(adapter.store, workflows=[wf])
    tenant = tenant_of(adapter)
    async with running(worker(adapter.store, workflows=[wf], activities=[produce])):
        run = await engine.start(wf, 1, tenant_id=tenant)
        outcome = await result(run)
    assert outcome in (f"value:{value!r}", "failed:PayloadError"), outcome
    try:
        await engine.start(wf, value, tenant_id=tenant)  # type: ignore[arg-type]
    except flows.PayloadError:
        pass
    else:
        raise AssertionError("a NaN/inf input was accepted for an int parameter")
    try:
        started = await engine.start(f"nan-wf-{adapter.ns}", {"x": value}, tenant_id=tenant)
    except flows.PayloadError:
        return
    record = await adapter.store.get_workflow(tenant, started.workflow_id)
    decoded = msgspec.json.decode(record.input)
    assert decoded != {"x": None}, "silently null"
