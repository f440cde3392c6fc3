"""Store contract: claiming, fenced commits, activity tasks and timers."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from flows_core import ErrorInfo, LeaseLost
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    SignalReceived,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCompleted,
)
from flows_core.store import (
    ActivityResult,
    ActivityRetry,
    ActivityTaskClaim,
    ActivityTaskSpec,
    Lease,
    TimerTaskSpec,
    WorkflowStatus,
    WorkflowTaskClaim,
)
from tests.contract.adapters import Adapter
from tests.contract.checks import assert_history_invariants, assert_record_matches
from tests.contract.kit import Kit, canon, decoded, raw

SHORT = timedelta(seconds=0.3)


def close_to(a: datetime | None, b: datetime, tolerance: float = 0.002) -> bool:
    return a is not None and abs((a - b).total_seconds()) <= tolerance


async def schedule(
    kit: Kit,
    claim: WorkflowTaskClaim,
    activities: list[int],
    timers: dict[int, datetime] | None = None,
    *,
    name: str | None = None,
) -> None:
    """Commit a workflow task scheduling activity steps ``activities`` and ``timers``."""
    timers = timers or {}
    now = kit.now()
    name = name or kit.act
    events = []
    specs = []
    for seq in sorted([*activities, *timers]):
        if seq in timers:
            events.append(TimerStarted(seq=seq, fire_at=timers[seq], at=now))
        else:
            events.append(ActivityScheduled(seq=seq, name=name, input=raw({"seq": seq}), at=now))
            specs.append(ActivityTaskSpec(seq=seq, name=name, input=raw({"seq": seq})))
    top = max([*activities, *timers], default=claim.workflow.next_seq - 1)
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            events,
            next_seq=top + 1,
            activity_tasks=specs,
            timers=[TimerTaskSpec(seq=s, fire_at=t) for s, t in timers.items()],
        )
    )


async def snapshot(kit: Kit, workflow_id: str) -> tuple[object, ...]:
    record = await kit.store.get_workflow(kit.tenant, workflow_id)
    history = await kit.store.get_history(kit.tenant, workflow_id)
    return (
        record.status,
        record.next_seq,
        record.history_length,
        decoded(record.output),
        record.error,
        canon(history),
    )


# -- claim --


async def test_claim_serves_only_requested_workflow_types(kit: Kit) -> None:
    other = f"other-{kit.ns}"
    await kit.start("v1")
    await kit.start("v2", version=2)
    await kit.start("o1", name=other)
    got = await kit.claim(types=[(kit.wf, 2)])
    assert [c.lease.workflow_id for c in got] == ["v2"]
    assert await kit.claim(types=[(kit.wf, 3), (f"nope-{kit.ns}", 1)]) == []
    assert await kit.claim(types=[], acts=[kit.act]) == []
    got = await kit.claim(types=[(kit.wf, 1), (other, 1)])
    assert sorted(c.lease.workflow_id for c in got) == ["o1", "v1"]
    for c in got:
        assert isinstance(c, WorkflowTaskClaim)
        assert c.workflow.workflow_id == c.lease.workflow_id


async def test_claim_serves_only_requested_activity_names(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    other = f"other-act-{kit.ns}"
    now = kit.now()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [
                ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=now),
                ActivityScheduled(seq=2, name=other, input=raw(2), at=now),
            ],
            next_seq=3,
            activity_tasks=[
                ActivityTaskSpec(seq=1, name=kit.act, input=raw(1)),
                ActivityTaskSpec(seq=2, name=other, input=raw(2)),
            ],
        )
    )
    assert await kit.claim(types=[], acts=[f"nope-{kit.ns}"]) == []
    got = await kit.claim(types=[(kit.wf, 1)], acts=[other])
    assert len(got) == 1
    task = got[0]
    assert isinstance(task, ActivityTaskClaim)
    assert (task.seq, task.activity_name, decoded(task.input)) == (2, other, 2)
    assert (task.workflow_name, task.attempt, task.cancel_requested) == (kit.wf, 1, False)
    assert (task.lease.workflow_id, task.lease.tenant_id) == (new.workflow_id, kit.tenant)
    act = await kit.claim_act()
    assert act.seq == 1


async def test_claim_respects_limit_and_never_hands_out_a_task_twice(kit: Kit) -> None:
    for _ in range(5):
        await kit.start()
    seen: list[str] = []
    for expected in (2, 2, 1, 0):
        got = await kit.claim(limit=2)
        assert len(got) == expected
        seen.extend(c.lease.task_id for c in got)
    assert len(set(seen)) == 5
    assert len({c for c in seen}) == len(seen)


async def test_claim_with_another_shard_key_sees_nothing(kit: Kit) -> None:
    await kit.start()
    assert await kit.claim(shards=[f"elsewhere-{kit.ns}"]) == []
    assert len(await kit.claim(shards=[kit.shard])) == 1


async def test_each_claim_gets_a_new_lease_token(kit: Kit) -> None:
    new = await kit.start()
    first = await kit.claim_wf()
    await kit.store.release(first.lease)
    second = await kit.claim_wf()
    assert second.lease.task_id == first.lease.task_id
    assert second.lease.token != first.lease.token
    assert second.lease.workflow_id == new.workflow_id
    assert second.lease.expires_at > kit.now()


async def test_an_expired_lease_is_claimable_again(kit: Kit, adapter: Adapter) -> None:
    await kit.start()
    first = await kit.claim_wf(lease=SHORT, owner="a")
    assert await kit.claim(owner="b") == [], "a live lease is not claimable"
    await adapter.pass_time(0.4)
    second = await kit.claim_wf(owner="b")
    assert second.lease.task_id == first.lease.task_id
    assert second.lease.token != first.lease.token


async def test_concurrent_claimers_never_get_the_same_task(kit: Kit) -> None:
    ids = [(await kit.start()).workflow_id for _ in range(12)]
    results = await asyncio.gather(
        *(kit.claim(limit=3, owner=f"w{i}") for i in range(6)), return_exceptions=True
    )
    claimed = []
    for r in results:
        assert not isinstance(r, BaseException), r
        claimed.extend(r)
    task_ids = [c.lease.task_id for c in claimed]
    assert len(task_ids) == len(set(task_ids)), "a task was handed to two claimers"
    claimed.extend(await kit.claim(limit=20))  # whatever was skipped is still there
    assert sorted(c.lease.workflow_id for c in claimed) == sorted(ids)


async def test_claim_does_not_return_hidden_tasks(kit: Kit, adapter: Adapter) -> None:
    """Timers are never claimed; retries stay hidden until their visible_at."""
    await kit.start()
    claim = await kit.claim_wf()
    later = kit.now() + timedelta(seconds=30)
    await schedule(kit, claim, [1], {2: later})
    act = await kit.claim_act(lease=SHORT)
    await kit.store.retry_activity(
        ActivityRetry(
            lease=act.lease,
            next_attempt=2,
            visible_at=kit.now() + timedelta(seconds=30),
            error=ErrorInfo(type="E", message="boom", attempts=1),
        )
    )
    await adapter.pass_time(0.4)
    assert await kit.claim(acts=[kit.act], limit=10) == []


# -- commit fencing --


async def test_commit_with_a_wrong_token_is_refused_and_writes_nothing(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    before = await snapshot(kit, new.workflow_id)
    forged = Lease(
        task_id=claim.lease.task_id,
        token="not-the-token",
        tenant_id=claim.lease.tenant_id,
        shard_key=claim.lease.shard_key,
        workflow_id=claim.lease.workflow_id,
        expires_at=claim.lease.expires_at,
    )
    commit = kit.commit(
        claim,
        [ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=kit.now())],
        next_seq=2,
        activity_tasks=[ActivityTaskSpec(seq=1, name=kit.act, input=raw(1))],
        lease=forged,
    )
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(commit)
    assert await snapshot(kit, new.workflow_id) == before
    assert await kit.claim(types=[], acts=[kit.act]) == [], "no activity task was written"
    # The real claimant still can.
    await kit.store.commit_workflow_task(kit.commit(claim, commit.events, next_seq=2))
    assert (await kit.store.get_workflow(kit.tenant, new.workflow_id)).next_seq == 2


async def test_stale_claimant_is_fenced_after_another_claimed(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    stale = await kit.claim_wf(lease=SHORT, owner="zombie")
    await adapter.pass_time(0.4)
    fresh = await kit.claim_wf(owner="fresh")
    before = await snapshot(kit, new.workflow_id)
    zombie_commit = kit.commit(
        stale,
        [ActivityScheduled(seq=1, name="zombie-step", input=raw(0), at=kit.now())],
        next_seq=2,
        activity_tasks=[ActivityTaskSpec(seq=1, name="zombie-step", input=raw(0))],
    )
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(zombie_commit)
    with pytest.raises(LeaseLost):
        await kit.store.park_workflow(stale.lease, ErrorInfo(type="X", message="zombie"))
    assert await snapshot(kit, new.workflow_id) == before
    await kit.store.release(stale.lease)  # silent, and does not free the fresh lease
    assert await kit.claim(owner="third") == []
    await schedule(kit, fresh, [1])
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert [type(e).__name__ for e in history] == ["WorkflowStarted", "ActivityScheduled"]
    assert history[1].name == kit.act  # type: ignore[union-attr]


async def test_commit_with_an_unexpected_next_seq_or_history_length_is_refused(
    kit: Kit,
) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    before = await snapshot(kit, new.workflow_id)
    commit = kit.commit(
        claim,
        [ActivityScheduled(seq=5, name=kit.act, input=raw(1), at=kit.now())],
        next_seq=6,
        expected_next_seq=5,
    )
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(commit)
    assert await snapshot(kit, new.workflow_id) == before
    other = kit.commit(claim, [], claimed_history_length=len(claim.history) + 1)
    with pytest.raises(LeaseLost):
        await kit.store.commit_workflow_task(other)
    assert await snapshot(kit, new.workflow_id) == before
    await kit.store.commit_workflow_task(kit.commit(claim, []))  # the true one still can


async def test_commit_appends_events_in_order_and_updates_the_row(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    now = kit.now()
    fire_at = now + timedelta(seconds=60)
    events = [
        ActivityScheduled(seq=1, name=kit.act, input=raw("a"), at=now),
        ActivityCompleted(seq=1, output=raw("A"), attempt=1, at=now),
        ActivityScheduled(seq=2, name=kit.act, input=raw("b"), at=now),
        TimerStarted(seq=3, fire_at=fire_at, at=now),
    ]
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            events,
            next_seq=4,
            activity_tasks=[ActivityTaskSpec(seq=2, name=kit.act, input=raw("b"))],
            timers=[TimerTaskSpec(seq=3, fire_at=fire_at)],
        )
    )
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert canon(history) == canon([new.started, *events])
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.RUNNING
    assert not record.workflow_task_pending
    assert_record_matches(record, history)
    assert_history_invariants(history)
    assert await kit.claim(acts=[]) == [], "the workflow task was deleted"
    act = await kit.claim_act()
    assert (act.seq, decoded(act.input)) == (2, "b")

    # A second commit continues right after: positions stay gap-free.
    await kit.store.complete_activity(
        ActivityResult(lease=act.lease, event=ActivityCompleted(seq=2, output=raw("B"), at=now))
    )
    claim2 = await kit.claim_wf()
    assert canon(claim2.history) == canon(await kit.store.get_history(kit.tenant, new.workflow_id))
    more = [ActivityScheduled(seq=4, name=kit.act, input=raw("c"), at=now)]
    await kit.store.commit_workflow_task(
        kit.commit(
            claim2,
            more,
            next_seq=5,
            activity_tasks=[ActivityTaskSpec(seq=4, name=kit.act, input=raw("c"))],
        )
    )
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert canon(history[len(claim2.history) :]) == canon(more)
    assert len(history) == 7
    assert_history_invariants(history)


async def test_terminal_commit_drops_every_task(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    soon = kit.now() + timedelta(seconds=0.3)
    await schedule(kit, claim, [1, 2], {3: soon})
    act = await kit.claim_act(acts=[kit.act], limit=1)
    await kit.store.complete_activity(
        ActivityResult(
            lease=act.lease, event=ActivityCompleted(seq=act.seq, output=raw(1), at=kit.now())
        )
    )
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [WorkflowCompleted(output=raw({"ok": True}), at=kit.now())],
            status=WorkflowStatus.COMPLETED,
            output={"ok": True},
        )
    )
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.status == WorkflowStatus.COMPLETED
    assert decoded(record.output) == {"ok": True}
    assert not record.workflow_task_pending
    await adapter.pass_time(0.4)
    assert await kit.claim(acts=[kit.act], limit=10) == [], "activity task dropped"
    assert await kit.store.fire_due_timers([kit.shard], 10) == 0, "timer dropped"
    assert await kit.store.next_due([kit.shard]) is None
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert isinstance(history[-1], WorkflowCompleted)
    assert_history_invariants(history)
    assert_record_matches(record, history)


async def test_drop_seqs_removes_activity_and_timer_tasks(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    soon = kit.now() + timedelta(seconds=0.3)
    await schedule(kit, claim, [1, 2], {3: soon, 4: soon})
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    claim = await kit.claim_wf()
    now = kit.now()
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [StepCancelled(seq=1, reason="test", at=now), StepCancelled(seq=3, reason="t", at=now)],
            drop_seqs=[1, 3],
        )
    )
    await adapter.pass_time(0.4)
    acts = await kit.claim(types=[], acts=[kit.act], limit=10)
    assert [a.seq for a in acts if isinstance(a, ActivityTaskClaim)] == [2]
    assert await kit.store.fire_due_timers([kit.shard], 10) == 1
    history = await kit.flushed_history(new.workflow_id)
    fired = [e.seq for e in history if isinstance(e, TimerFired)]
    assert fired == [4]
    assert_history_invariants(history)


async def test_signal_during_a_leased_workflow_task_keeps_it_pending(kit: Kit) -> None:
    """A signal that arrives while the task runs keeps the (single) workflow task
    pending; it waits in the inbox and enters the history at the next claim."""
    new = await kit.start()
    claim = await kit.claim_wf()
    sig = kit.signal("late", 1)
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, sig)
    assert await kit.claim(limit=10) == [], "never a second workflow task while one is leased"
    now = kit.now()
    events = [ActivityScheduled(seq=1, name=f"x-{kit.ns}", input=raw(0), at=now)]
    await kit.store.commit_workflow_task(kit.commit(claim, events, next_seq=2))
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.workflow_task_pending, "the workflow must run again to see the signal"
    assert record.inbox_length == 1
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(
        [new.started, *events]
    )
    again = await kit.claim(limit=10)
    assert len(again) == 1, "coalesced: one workflow task"
    assert isinstance(again[0], WorkflowTaskClaim)
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    # The signal enters the history after the commit, when the code is shown it.
    assert canon(history) == canon([new.started, *events, sig])
    assert canon(again[0].history) == canon(history)
    assert again[0].workflow.next_seq == 2


async def test_commit_without_news_deletes_the_workflow_task(kit: Kit) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    await kit.store.commit_workflow_task(kit.commit(claim, []))
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert not record.workflow_task_pending
    assert await kit.claim(limit=10) == []
    # Signals and cancels bring it back, still as one task.
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, kit.signal())
    await kit.store.cancel_workflow(kit.tenant, new.workflow_id, CancelRequested(at=kit.now()))
    assert len(await kit.claim(limit=10)) == 1


# -- activity tasks --


async def test_complete_activity_appends_deletes_and_wakes_the_workflow(
    kit: Kit, adapter: Adapter
) -> None:
    new = await kit.start()
    await schedule(kit, await kit.claim_wf(), [1, 2])
    first = await kit.claim_act(limit=1, lease=SHORT)
    done = ActivityCompleted(seq=first.seq, output=raw("r1"), attempt=1, at=kit.now())
    await kit.store.complete_activity(ActivityResult(lease=first.lease, event=done))
    record = await kit.store.get_workflow(kit.tenant, new.workflow_id)
    assert record.inbox_length == 1
    assert record.workflow_task_pending
    second = await kit.claim_act(limit=1)
    assert second.seq != first.seq
    failed = ActivityFailedEvent(
        seq=second.seq, error=ErrorInfo(type="E", message="no", attempts=1), at=kit.now()
    )
    await kit.store.complete_activity(ActivityResult(lease=second.lease, event=failed))
    await adapter.pass_time(0.4)
    assert await kit.claim(types=[], acts=[kit.act], limit=10) == [], "tasks deleted"
    with pytest.raises(LeaseLost):  # completing twice is fenced: recorded exactly once
        await kit.store.complete_activity(ActivityResult(lease=first.lease, event=done))
    wf_tasks = await kit.claim(acts=[], limit=10)
    assert len(wf_tasks) == 1, "one (coalesced) workflow task for two results"
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert canon(wf_tasks[0].history) == canon(history)  # type: ignore[union-attr]
    assert canon(history[-2:]) == canon([done, failed])
    assert_history_invariants(history)


async def test_retry_hides_the_task_until_visible_at_with_the_next_attempt(
    kit: Kit, adapter: Adapter
) -> None:
    new = await kit.start()
    await schedule(kit, await kit.claim_wf(), [1])
    act = await kit.claim_act()
    assert act.attempt == 1
    visible_at = kit.now() + timedelta(seconds=0.3)
    error = ErrorInfo(type="Flaky", message="try again", attempts=1)
    before = await kit.store.get_history(kit.tenant, new.workflow_id)
    await kit.store.retry_activity(
        ActivityRetry(lease=act.lease, next_attempt=2, visible_at=visible_at, error=error)
    )
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    assert await kit.claim(types=[], acts=[kit.act]) == []
    assert close_to(await kit.store.next_due([kit.shard]), visible_at)
    with pytest.raises(LeaseLost):
        await kit.store.complete_activity(
            ActivityResult(
                lease=act.lease, event=ActivityCompleted(seq=1, output=raw(0), at=kit.now())
            )
        )
    await adapter.pass_time(0.4)
    again = await kit.claim_act()
    assert again.attempt == 2
    assert again.seq == 1
    assert again.lease.token != act.lease.token


async def test_heartbeat_extends_the_lease_and_reports_cancel(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    await schedule(kit, await kit.claim_wf(), [1])
    act = await kit.claim_act(lease=SHORT)
    reply = await kit.store.heartbeat(act.lease, timedelta(seconds=30))
    assert reply.expires_at > act.lease.expires_at
    assert not reply.cancel_requested
    await adapter.pass_time(0.4)  # past the original lease
    assert await kit.claim(types=[], acts=[kit.act], owner="other") == []
    await kit.store.cancel_workflow(kit.tenant, new.workflow_id, CancelRequested(at=kit.now()))
    reply = await kit.store.heartbeat(act.lease, timedelta(seconds=30))
    assert reply.cancel_requested
    # The extended lease is still good for completing.
    await kit.store.complete_activity(
        ActivityResult(lease=act.lease, event=ActivityCompleted(seq=1, output=raw(1), at=kit.now()))
    )
    history = await kit.flushed_history(new.workflow_id)
    assert isinstance(history[-1], ActivityCompleted)


async def test_lost_activity_lease_refuses_heartbeat_complete_and_retry(
    kit: Kit, adapter: Adapter
) -> None:
    new = await kit.start()
    await schedule(kit, await kit.claim_wf(), [1])
    stale = await kit.claim_act(lease=SHORT, owner="zombie")
    await adapter.pass_time(0.4)
    fresh = await kit.claim_act(owner="fresh")
    assert (stale.attempt, fresh.attempt) == (1, 2), "the lost lease's attempt is counted"
    before = await kit.store.get_history(kit.tenant, new.workflow_id)
    with pytest.raises(LeaseLost):
        await kit.store.heartbeat(stale.lease, timedelta(seconds=30))
    with pytest.raises(LeaseLost):
        await kit.store.complete_activity(
            ActivityResult(
                lease=stale.lease, event=ActivityCompleted(seq=1, output=raw("z"), at=kit.now())
            )
        )
    with pytest.raises(LeaseLost):
        await kit.store.retry_activity(
            ActivityRetry(
                lease=stale.lease,
                next_attempt=2,
                visible_at=kit.now(),
                error=ErrorInfo(type="E", message="z"),
            )
        )
    assert canon(await kit.store.get_history(kit.tenant, new.workflow_id)) == canon(before)
    await kit.store.complete_activity(
        ActivityResult(
            lease=fresh.lease, event=ActivityCompleted(seq=1, output=raw("f"), at=kit.now())
        )
    )
    history = await kit.flushed_history(new.workflow_id)
    results = [e for e in history if isinstance(e, ActivityCompleted)]
    assert len(results) == 1
    assert decoded(results[0].output) == "f"


async def test_release_makes_a_task_claimable_at_once(kit: Kit) -> None:
    await kit.start()
    wf = await kit.claim_wf(owner="a")
    await kit.store.release(wf.lease)
    wf2 = await kit.claim_wf(owner="b")
    assert wf2.lease.task_id == wf.lease.task_id
    await schedule(kit, wf2, [1])
    act = await kit.claim_act(owner="a")
    await kit.store.release(act.lease)
    act2 = await kit.claim_act(owner="b")
    assert (act2.lease.task_id, act2.seq, act2.attempt) == (act.lease.task_id, 1, 1)
    await kit.store.release(act.lease)  # a stale release is silent and frees nothing
    assert await kit.claim(types=[], acts=[kit.act], owner="c") == []


async def test_an_activity_claim_counts_on_after_a_lost_lease_not_after_a_release(
    kit: Kit, adapter: Adapter
) -> None:
    """One failure policy: a claim whose lease ran out with nothing recorded was an
    attempt (its claimant crashed or lost the lease), so the next claim gets the next
    number; a release gives the claim back uncounted; a retry sets the number."""
    await kit.start()
    await schedule(kit, await kit.claim_wf(), [1])
    first = await kit.claim_act(lease=SHORT, owner="a")
    assert first.attempt == 1
    await adapter.pass_time(0.4)  # a's lease runs out, nothing recorded
    second = await kit.claim_act(owner="b")
    assert second.attempt == 2
    await kit.store.release(second.lease)
    third = await kit.claim_act(lease=SHORT, owner="c")
    assert third.attempt == 2, "a released claim is not counted"
    await kit.store.retry_activity(
        ActivityRetry(
            lease=third.lease,
            next_attempt=3,
            visible_at=kit.now(),
            error=ErrorInfo(type="Flaky", message="again", attempts=2),
        )
    )
    fourth = await kit.claim_act(lease=SHORT, owner="d")
    assert fourth.attempt == 3, "a retry's next attempt, not counted twice"
    await adapter.pass_time(0.4)
    fifth = await kit.claim_act(lease=SHORT, owner="e")
    assert fifth.attempt == 4
    assert fifth.lease.task_id == first.lease.task_id
    await adapter.pass_time(0.4)
    # a heartbeat of an expired lease nobody took over keeps it: no new attempt
    await kit.store.heartbeat(fifth.lease, timedelta(seconds=30))
    assert await kit.claim(types=[], acts=[kit.act], owner="f") == []


# -- timers --


async def test_timers_fire_when_due_once_and_wake_the_workflow(kit: Kit, adapter: Adapter) -> None:
    new = await kit.start()
    claim = await kit.claim_wf()
    soon = kit.now() + timedelta(seconds=0.3)
    late = kit.now() + timedelta(seconds=60)
    await schedule(kit, claim, [], {1: soon, 2: late})
    assert await kit.store.fire_due_timers([kit.shard], 10) == 0
    assert close_to(await kit.store.next_due([kit.shard]), soon)
    assert await kit.claim(limit=10) == [], "timers are not claimable tasks"

    await adapter.pass_time(0.4)
    assert await kit.store.fire_due_timers([kit.shard], 10) == 1
    assert await kit.store.fire_due_timers([kit.shard], 10) == 0, "a timer fires once"
    assert close_to(await kit.store.next_due([kit.shard]), late)
    got = await kit.claim(limit=10)
    assert len(got) == 1
    assert isinstance(got[0], WorkflowTaskClaim)
    history = await kit.store.get_history(kit.tenant, new.workflow_id)
    assert isinstance(history[-1], TimerFired)
    assert history[-1].seq == 1
    assert canon(got[0].history) == canon(history)
    assert_history_invariants(history)


async def test_concurrent_timer_firing_fires_each_timer_once(kit: Kit, adapter: Adapter) -> None:
    ids = []
    for _ in range(4):
        new = await kit.start()
        ids.append(new.workflow_id)
    for _ in range(4):
        claim = await kit.claim_wf(limit=1)
        await schedule(kit, claim, [], {1: kit.now() + timedelta(seconds=0.2)})
    await adapter.pass_time(0.3)
    counts = await asyncio.gather(*(kit.store.fire_due_timers([kit.shard], 10) for _ in range(4)))
    counts.append(await kit.store.fire_due_timers([kit.shard], 10))
    assert sum(counts) == 4
    for wid in ids:
        history = await kit.flushed_history(wid)
        assert [e.seq for e in history if isinstance(e, TimerFired)] == [1]
        assert_history_invariants(history)


async def test_fire_due_timers_respects_limit(kit: Kit, adapter: Adapter) -> None:
    await kit.start()
    claim = await kit.claim_wf()
    soon = kit.now() + timedelta(seconds=0.2)
    await schedule(kit, claim, [], {1: soon, 2: soon, 3: soon})
    await adapter.pass_time(0.3)
    assert await kit.store.fire_due_timers([kit.shard], 2) == 2
    assert await kit.store.fire_due_timers([kit.shard], 2) == 1
    assert await kit.store.fire_due_timers([kit.shard], 2) == 0


async def test_signal_with_payload_is_kept_verbatim(kit: Kit) -> None:
    new = await kit.start()
    payload = {"nested": [1, 2, {"ü": "ñ"}], "n": None}
    sig = kit.signal("data", payload)
    await kit.store.signal_workflow(kit.tenant, new.workflow_id, sig)
    stored = (await kit.flushed_history(new.workflow_id))[-1]
    assert isinstance(stored, SignalReceived)
    assert decoded(stored.payload) == payload
    assert (stored.name, stored.signal_id) == ("data", sig.signal_id)


async def test_activity_task_keeps_its_scheduled_at_across_retries(kit: Kit) -> None:
    """The first-scheduled time of a queued step (schedule-to-close counts from it) is
    stored with the task and handed back by every claim, after a retry too."""
    await kit.start()
    claim = await kit.claim_wf()
    first = kit.now() - timedelta(hours=3)
    await kit.store.commit_workflow_task(
        kit.commit(
            claim,
            [ActivityScheduled(seq=1, name=kit.act, input=raw(1), at=first)],
            next_seq=2,
            activity_tasks=[
                ActivityTaskSpec(seq=1, name=kit.act, input=raw(1), scheduled_at=first)
            ],
        )
    )
    act = await kit.claim_act()
    assert close_to(act.scheduled_at, first)
    await kit.store.retry_activity(
        ActivityRetry(
            lease=act.lease,
            next_attempt=2,
            visible_at=kit.now(),
            error=ErrorInfo(type="Boom", message="x"),
        )
    )
    again = await kit.claim_act()
    assert again.attempt == 2
    assert close_to(again.scheduled_at, first)
