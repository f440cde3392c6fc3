"""Metrics and traces of real runs: Engine(observer=...) and Worker(observer=...)."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import flows_core as flows
from flows_core._observe import CompositeObserver
from flows_memory import MemoryStore
from flows_observe.otel import OTelObserver
from flows_observe.prometheus import PrometheusObserver, serve_metrics

from .harness import Faults, eventually

FAST_RETRY = flows.RetryPolicy(
    initial_interval=timedelta(milliseconds=10), max_interval=timedelta(milliseconds=10)
)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """GET /metrics and parse it: (name, sorted labels) -> value."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- workflows of the metrics run --

attempts: dict[str, int] = {}


@flows.activity("e2e-charge", retry=FAST_RETRY)
async def charge(amount: int) -> int:
    attempts["charge"] = attempts.get("charge", 0) + 1
    if attempts["charge"] == 1:
        raise ConnectionError("card network blip")
    return amount


@flows.activity("e2e-decline", retry=flows.RetryPolicy(max_attempts=1))
async def decline(amount: int) -> int:
    raise PermissionError("card declined")


@flows.workflow("e2e-order")
async def order(ctx: flows.WorkflowContext, amount: int) -> str:
    paid = await ctx.execute(charge, amount)
    carrier = await ctx.wait_for_signal("shipped", str)
    return f"{paid} via {carrier}"


@flows.workflow("e2e-declined")
async def declined(ctx: flows.WorkflowContext, amount: int) -> int:
    return await ctx.execute(decline, amount)


@flows.workflow("e2e-waits")
async def waits(ctx: flows.WorkflowContext, _: None) -> str:
    return await ctx.wait_for_signal("never", str)


@flows.workflow("e2e-illegal")
async def illegal(ctx: flows.WorkflowContext, _: None) -> None:
    await asyncio.sleep(0)  # not a Flows step: dead-lettered


@flows.workflow("e2e-unserved")
async def unserved(ctx: flows.WorkflowContext, _: None) -> None:
    return None


async def test_scraped_counters_match_the_run() -> None:
    attempts.clear()
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, sample_interval=0.05)
    faults = Faults()
    store = MemoryStore(fault_hook=faults)
    engine = flows.Engine(store, observer=observer)
    worker = flows.Worker(
        store,
        workflows=[order, declined, waits, illegal],
        activities=[charge, decline],
        poll_interval=0.02,
        observer=observer,
    )
    server = serve_metrics(0, registry=registry)
    port = server.server_port
    running = asyncio.ensure_future(worker.run())
    try:
        faults.fail("commit_workflow_task")  # one store error, retried by the worker
        first = await engine.start(order, 5)
        second = await engine.start(order, 7)
        lost = await engine.start(declined, 1)
        cancelled = await engine.start(waits, None)
        parked = await engine.start(illegal, None)
        await engine.start(unserved, None)  # no worker runs it: it stays queued

        async def orders_wait_for_their_signal() -> bool:
            for run in (first, second):
                history = await engine.history(run.workflow_id)
                if not any(getattr(e, "name", None) == "shipped" for e in history):
                    return False
            return True

        await eventually(orders_wait_for_their_signal)
        with pytest.raises(flows.WorkflowFailed):
            await lost.result(timeout=20)

        async def is_parked() -> bool:
            return (await engine.query(parked.workflow_id)).status == flows.WorkflowStatus.PARKED

        await eventually(is_parked)
        await engine.cancel(cancelled.workflow_id)
        with pytest.raises(flows.WorkflowCancelled):
            await cancelled.result(timeout=20)

        # Mid-run: the orders wait for their signal.
        during = await asyncio.to_thread(scrape, port)
        assert metric(during, "flows_workflows_started_total", workflow="e2e-order") == 2
        assert metric(during, "flows_workflows_completed_total", workflow="e2e-order") == 0
        assert metric(during, "flows_workflows_failed_total", workflow="e2e-declined") == 1
        assert metric(during, "flows_workflows_cancelled_total", workflow="e2e-waits") == 1
        assert metric(during, "flows_dead_letters_total", workflow="e2e-illegal") == 1
        assert (
            metric(during, "flows_activity_attempts_total", activity="e2e-charge", outcome="retry")
            == 1
        )
        assert (
            metric(during, "flows_activity_attempts_total", activity="e2e-charge", outcome="ok")
            == 2
        )
        assert (
            metric(
                during, "flows_activity_attempts_total", activity="e2e-decline", outcome="failed"
            )
            == 1
        )
        assert metric(during, "flows_activity_failures_total", activity="e2e-charge") == 1
        assert (
            metric(during, "flows_activity_attempt_duration_seconds_count", activity="e2e-charge")
            == 3
        )
        assert metric(during, "flows_store_errors_total", operation="commit_workflow_task") == 1

        async def unserved_is_counted() -> bool:
            samples = await asyncio.to_thread(scrape, port)
            return (
                sum(
                    v
                    for (name, labels), v in samples.items()
                    if name == "flows_queue_depth"
                    and dict(labels)["shard"].startswith("e2e-unserved-")
                )
                == 1
            )

        await eventually(unserved_is_counted)

        for run in (first, second):
            await engine.signal(run.workflow_id, "shipped", "post")
        assert await first.result(timeout=20) == "5 via post"
        assert await second.result(timeout=20) == "7 via post"
        after = await asyncio.to_thread(scrape, port)
    finally:
        await worker.stop()
        await running
        server.shutdown()
        server.server_close()
    assert metric(after, "flows_workflows_completed_total", workflow="e2e-order") == 2
    assert metric(after, "flows_workflows_started_total", workflow="e2e-unserved") == 1
    tasks = metric(after, "flows_workflow_task_duration_seconds_count", workflow="e2e-order")
    committed = metric(
        after, "flows_workflow_tasks_total", workflow="e2e-order", outcome="committed"
    )
    assert tasks >= 4  # two workflows, each at least a first task and a resume
    assert committed >= 4
    assert (
        metric(after, "flows_workflow_tasks_total", workflow="e2e-illegal", outcome="parked") == 1
    )


async def test_a_lease_loss_is_counted() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, sample_interval=None)
    first_running = asyncio.Event()
    second_done = asyncio.Event()
    calls = 0

    @flows.activity("e2e-slow")
    async def slow(_: None) -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            first_running.set()
            await asyncio.wait_for(second_done.wait(), 20)  # outlives its lease
            return "late"
        second_done.set()
        return "second"

    @flows.workflow("e2e-lease")
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        return await ctx.execute(slow, None)

    store = MemoryStore()
    engine = flows.Engine(store, observer=observer)

    def worker(name: str) -> flows.Worker:
        return flows.Worker(
            store,
            workflows=[wf],
            activities=[slow],
            poll_interval=0.02,
            lease=timedelta(milliseconds=300),
            worker_id=name,
            observer=observer,
        )

    zombie, rescuer = worker("zombie"), worker("rescuer")
    zombie_run = asyncio.ensure_future(zombie.run())
    rescuer_run: asyncio.Future[None] | None = None
    try:
        run = await engine.start(wf, None)
        await asyncio.wait_for(first_running.wait(), 20)
        rescuer_run = asyncio.ensure_future(rescuer.run())
        assert await run.result(timeout=20) == "second"
        await eventually(
            lambda: (
                registry.get_sample_value("flows_lease_losses_total", {"kind": "workflow_task"})
                == 1
            )
        )
    finally:
        await zombie.stop()
        await zombie_run
        await rescuer.stop()
        if rescuer_run is not None:
            await rescuer_run
    assert (
        registry.get_sample_value(
            "flows_workflow_tasks_total", {"workflow": "e2e-lease", "outcome": "lease_lost"}
        )
        == 1
    )
    assert (
        registry.get_sample_value("flows_workflows_completed_total", {"workflow": "e2e-lease"}) == 1
    )


# -- traces --


@pytest.fixture
def exporter() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


def named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def ids(span: ReadableSpan) -> tuple[int, int]:
    assert span.context is not None
    return span.context.trace_id, span.context.span_id


def parent(span: ReadableSpan) -> tuple[int, int] | None:
    return None if span.parent is None else (span.parent.trace_id, span.parent.span_id)


@pytest.fixture(params=["memory", pytest.param("pg", marks=pytest.mark.pg)])
async def any_store(request: pytest.FixtureRequest) -> AsyncIterator[Any]:
    """The in-memory store, and PostgreSQL (a fresh schema)."""
    if request.param == "memory":
        yield MemoryStore()
        return
    from conftest_pg import drop_pg_store, make_pg_store

    store = await make_pg_store(request.getfixturevalue("pg_dsn"))
    try:
        yield store
    finally:
        await drop_pg_store(store)


async def test_one_trace_across_a_worker_restart(
    exporter: tuple[TracerProvider, InMemorySpanExporter], any_store: Any
) -> None:
    provider, spans_out = exporter
    app = provider.get_tracer("app")

    @flows.activity("e2e-pay")
    async def pay(amount: int) -> int:
        with app.start_as_current_span("bank call"):  # the activity's own span
            return amount

    @flows.activity("e2e-ship")
    async def ship(_: None) -> str:
        return "shipped"

    @flows.workflow("e2e-traced")
    async def traced(ctx: flows.WorkflowContext, amount: int) -> str:
        await ctx.execute(pay, amount)
        await ctx.wait_for_signal("go", None)
        return await ctx.execute(ship, None)

    store = any_store

    def observer() -> CompositeObserver:  # each worker process has its own observer
        return CompositeObserver([OTelObserver(provider)])

    engine = flows.Engine(store, observer=observer())
    before = flows.Worker(
        store, workflows=[traced], activities=[pay], poll_interval=0.02, observer=observer()
    )
    running = asyncio.ensure_future(before.run())
    with app.start_as_current_span("POST /orders"):
        run = await engine.start(traced, 3)

    async def waits_for_go() -> bool:
        history = await engine.history(run.workflow_id)
        return any(getattr(e, "name", None) == "go" for e in history)

    try:
        await eventually(waits_for_go)
    finally:
        await before.stop()
        await running

    # A new process: the workflow worker and, separately, the only worker of "e2e-ship".
    after = flows.Worker(
        store, workflows=[traced], activities=[pay], poll_interval=0.02, observer=observer()
    )
    shipper = flows.Worker(store, activities=[ship], poll_interval=0.02, observer=observer())
    runs = [asyncio.ensure_future(w.run()) for w in (after, shipper)]
    try:
        await engine.signal(run.workflow_id, "go", None)
        assert await run.result(timeout=20) == "shipped"
    finally:
        for w in (after, shipper):
            await w.stop()
        await asyncio.gather(*runs)

    spans = spans_out.get_finished_spans()
    [request] = named(spans, "POST /orders")
    [start] = named(spans, "flows start e2e-traced")
    tasks = named(spans, "flows workflow_task e2e-traced")
    [pay_attempt] = named(spans, "flows activity e2e-pay")
    [bank] = named(spans, "bank call")
    [ship_attempt] = named(spans, "flows activity e2e-ship")
    trace_id = ids(request)[0]
    assert {ids(s)[0] for s in spans} == {trace_id}  # the whole life, one trace
    assert parent(start) == ids(request)
    assert len(tasks) >= 2  # before and after the restart
    assert all(parent(t) == ids(start) for t in tasks)
    assert parent(pay_attempt) in [ids(t) for t in tasks]  # inline: under its task
    assert parent(bank) == ids(pay_attempt)
    assert parent(ship_attempt) == ids(start)  # queued, in another worker


def test_the_readme_demo_runs() -> None:
    """examples/observability_demo.py, whose output the README shows."""
    import subprocess
    import sys
    from pathlib import Path

    out = subprocess.run(
        [sys.executable, "-m", "examples.observability_demo"],
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert "result: ch_42 shipped by DHL" in out
    assert "      flows activity charge-card  [retry] attempt 1\n        POST bank/charges" in out
    assert 'flows_workflows_completed_total{workflow="order"} 1.0' in out
