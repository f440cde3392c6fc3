"""The worker's sticky cache (flows_core._sticky) on the memory store: its bounds, what
leaves no entry behind, and the fallbacks to a full replay."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest

import flows_core as flows
from flows_core.store import ClaimRequest, WorkflowTaskClaim
from flows_memory import MemoryStore, TestEnvironment


@flows.activity("st-double")
async def double(n: int) -> int:
    return 2 * n


@flows.workflow("st-counter")
async def counter(ctx: flows.WorkflowContext, rounds: int) -> list[int]:
    seen: list[int] = []
    for _ in range(rounds):
        n = await ctx.wait_for_signal("add", int)
        seen.append(await ctx.execute(double, n))
    return seen


def env(**options: Any) -> TestEnvironment:
    return TestEnvironment(workflows=[counter], activities=[double], **options)


async def test_entries_are_bounded_by_count_least_recently_used_first() -> None:
    async with env(sticky_cache_size=2) as e:
        worker = e.workers[0]
        runs = []
        for n in range(4):
            runs.append(await e.engine.start(counter, 2, workflow_id=f"c{n}"))
            await e.wait_idle()
        assert [h.workflow_id for h in worker.sticky.hints()] == ["c2", "c3"]
        assert worker.counters["sticky_evictions"] == 2
        assert (await worker.stats()).sticky_cached == 2
        for round_ in (1, 2):
            for run in runs:
                await e.engine.signal(run.workflow_id, "add", round_)
                await e.wait_idle()
        for run in runs:
            assert await e.result(run) == [2, 4]
        # c2 and c3 resumed from the cache on the first signal, then each workflow
        # signalled is the most recent: c0..c3 with 2 slots always evict the next one
        assert worker.counters["sticky_hits"] == 2
        assert worker.sticky.hints() == []


async def test_entries_are_bounded_by_history_events() -> None:
    async with env(sticky_max_events=12) as e:
        worker = e.workers[0]
        run = await e.engine.start(counter, 5)
        for n in range(5):
            await e.wait_idle()
            held = worker.sticky.hints()
            length = (await e.store.get_workflow("default", run.workflow_id)).history_length
            # the history grows by 4 events a round: 2, 6, 10, then 14 is over the budget
            assert [h.history_length for h in held] == ([length] if length <= 12 else [])
            assert worker.sticky.events == sum(h.history_length for h in held)
            await e.engine.signal(run.workflow_id, "add", n)
        assert await e.result(run) == [0, 2, 4, 6, 8]


async def test_size_zero_turns_it_off() -> None:
    async with env(sticky_cache_size=0) as e:
        worker = e.workers[0]
        run = await e.engine.start(counter, 2)
        for n in range(2):
            await e.wait_idle()
            assert worker.sticky.hints() == []
            await e.engine.signal(run.workflow_id, "add", n)
        assert await e.result(run) == [0, 2]
        assert worker.counters["sticky_hits"] == worker.counters["sticky_misses"] == 0


def test_negative_bounds_are_refused() -> None:
    with pytest.raises(flows.InvalidArgument, match="sticky_cache_size"):
        flows.Worker(MemoryStore(), workflows=[counter], sticky_cache_size=-1)
    with pytest.raises(flows.InvalidArgument, match="sticky_max_events"):
        flows.Worker(MemoryStore(), workflows=[counter], sticky_max_events=-1)


async def test_cancelled_and_completed_workflows_leave_no_entry() -> None:
    async with env() as e:
        worker = e.workers[0]
        done = await e.engine.start(counter, 1)
        cancelled = await e.engine.start(counter, 3)
        await e.wait_idle()
        assert {h.workflow_id for h in worker.sticky.hints()} == {
            done.workflow_id,
            cancelled.workflow_id,
        }
        await e.engine.signal(done.workflow_id, "add", 1)
        await e.engine.cancel(cancelled.workflow_id)
        assert await e.result(done) == [2]
        with pytest.raises(flows.WorkflowCancelled):
            await e.result(cancelled)
        await e.wait_idle()
        assert worker.sticky.hints() == []
        assert worker.counters["sticky_hits"] == 2


async def test_a_continued_claim_without_its_entry_reads_the_whole_history() -> None:
    """A claim continued an entry the worker lost meanwhile (evicted after the claim was
    sent): the task reads the whole history under its lease and replays it."""
    async with env() as e:
        worker = e.workers[0]
        run = await e.engine.start(counter, 2)
        await e.engine.signal(run.workflow_id, "add", 1)
        await e.wait_idle()
        await e.stop()
        hints = worker.sticky.hints()
        assert len(hints) == 1
        await e.engine.signal(run.workflow_id, "add", 2)
        (claim,) = await e.store.claim(
            ClaimRequest(
                owner=worker.worker_id,
                workflow_types=[("st-counter", 1)],
                activity_names=[],
                limit=1,
                lease=timedelta(seconds=30),
                cached=hints,
            )
        )
        assert isinstance(claim, WorkflowTaskClaim)
        assert claim.history_from == hints[0].history_length
        worker.sticky.clear()
        misses = worker.counters["sticky_misses"]
        await worker._workflow_tasks.run(claim)
        assert worker.counters["sticky_misses"] == misses + 1
        assert await e.result(run) == [2, 4]


BLOCK_ONCE = [False]


@flows.workflow("st-blocking")
async def blocking(ctx: flows.WorkflowContext, rounds: int) -> list[int]:
    seen: list[int] = []
    for _ in range(rounds):
        n = await ctx.wait_for_signal("add", int)
        if BLOCK_ONCE[0]:
            BLOCK_ONCE[0] = False
            time.sleep(0.3)  # noqa: ASYNC251 (holds the loop: the task fails, is retried)
        seen.append(n)
    return seen


async def test_a_failed_task_drops_the_entry_and_the_retry_replays() -> None:
    async with TestEnvironment(
        workflows=[blocking], workflow_task_deadlock=0.1, workflow_task_backoff=timedelta(0)
    ) as e:
        worker = e.workers[0]
        run = await e.engine.start(blocking, 2)
        await e.wait_idle()
        assert len(worker.sticky) == 1
        BLOCK_ONCE[0] = True
        await e.engine.signal(run.workflow_id, "add", 1)
        await e.wait_idle()
        assert worker.counters["workflow_task_failures"] == 1
        # the retry replayed the whole history (its entry was dropped), then cached it
        assert (worker.counters["sticky_hits"], worker.counters["sticky_misses"]) == (1, 2)
        assert len(worker.sticky) == 1
        await e.engine.signal(run.workflow_id, "add", 2)
        assert await e.result(run) == [1, 2]
        assert worker.counters["sticky_hits"] == 2


async def test_a_task_resumed_from_the_cache_keeps_the_workflows_trace() -> None:
    """The trace context is stored in WorkflowStarted, which a continued claim does not
    carry: the cache keeps it, so every task of the workflow stays under its start."""
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from flows_observe.otel import OTelObserver

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with TestEnvironment(
        workflows=[counter], activities=[double], observer=OTelObserver(provider)
    ) as e:
        engine = flows.Engine(e.store, observer=OTelObserver(provider))
        with provider.get_tracer("app").start_as_current_span("request"):
            run = await engine.start(counter, 3)
        for n in range(3):
            await e.wait_idle()
            await e.engine.signal(run.workflow_id, "add", n)
        assert await e.result(run) == [0, 2, 4]
        assert e.workers[0].counters["sticky_hits"] == 3
    spans = exporter.get_finished_spans()
    [start] = [s for s in spans if s.name == "flows start st-counter"]
    tasks = [s for s in spans if s.name == "flows workflow_task st-counter"]
    assert len(tasks) == 4
    assert start.context is not None
    for task in tasks:
        assert task.parent is not None
        assert task.parent.span_id == start.context.span_id
    provider.shutdown()
