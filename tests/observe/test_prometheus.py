"""PrometheusObserver: counters against what happened, sampled queue gauges, the
HTTP endpoint and the ASGI app."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import urllib.request
from collections.abc import Sequence
from datetime import timedelta

import httpx
import msgspec
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from flows_core._errors import ErrorInfo
from flows_core._observe import AttemptOutcome, TaskOutcome, run_sampler
from flows_core.events import ActivityCompleted, WorkflowCompleted, WorkflowFailedEvent
from flows_core.store import StoreStats, WorkflowTaskClaim, WorkflowTaskCommit
from flows_memory import MemoryStore, VirtualClock
from flows_observe.prometheus import METRICS, PrometheusObserver, metrics_app, serve_metrics

from .harness import Faults, ObservedClient, ObservedWorker, commit, eventually, schedule


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    """A sample's value; 0 when it was never set (a counter not yet incremented)."""
    found = registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


async def test_counters_match_what_happened() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, sample_interval=None)
    clock = VirtualClock()
    faults = Faults()
    store = MemoryStore(clock=clock, fault_hook=faults)
    client = ObservedClient(store, observer)
    worker = ObservedWorker(store, observer, "w1")

    paid = await client.start("order", 1)
    unpaid = await client.start("order", 2)
    broken = await client.start("refund", 3)

    async def charge() -> str:
        return "paid"

    # order 1: "charge" inline, then it completes; its commit meets one store error.
    async def pay_and_finish(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        [step] = schedule(claim, "charge")
        out = msgspec.Raw(
            msgspec.json.encode(await worker.inline_activity(claim, "charge", step.seq, charge))
        )
        done = WorkflowCompleted(output=out, at=clock.now())
        return commit(claim, [step, ActivityCompleted(seq=step.seq, output=out, at=step.at), done])

    claim = await worker.claim_workflow_task("order")
    assert claim.workflow.workflow_id == paid
    faults.fail("commit_workflow_task")
    assert await worker.workflow_task(claim, pay_and_finish) is TaskOutcome.COMMITTED

    # order 2: "charge" through the queue, fails twice for good, then the workflow fails.
    async def queue_charge(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        [step] = schedule(claim, "charge")
        return commit(claim, [step], queued=[step])

    claim = await worker.claim_workflow_task("order")
    assert claim.workflow.workflow_id == unpaid
    await worker.workflow_task(claim, queue_charge)

    async def declined() -> str:
        raise PermissionError("card declined")

    outcomes = [
        (await worker.queued_activity(
            await worker.claim_activity_task("charge"), declined, max_attempts=2
        )).outcome
        for _ in range(2)
    ]  # fmt: skip
    assert outcomes == [AttemptOutcome.RETRY, AttemptOutcome.FAILED]

    async def fail(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        error = ErrorInfo(type="ActivityFailed", message="card declined")
        return commit(claim, [WorkflowFailedEvent(error=error, at=clock.now())])

    await worker.workflow_task(await worker.claim_workflow_task("order"), fail)

    # refund: the first claimant stalls past its lease; a second worker takes the task
    # and dead-letters it; the first one's commit then finds its lease lost.
    stalled = await worker.claim_workflow_task("refund")
    clock.advance(timedelta(minutes=1))
    other = ObservedWorker(store, observer, "w2")
    retaken = await other.claim_workflow_task("refund")
    assert retaken.attempt == 2

    async def park(claim: WorkflowTaskClaim) -> ErrorInfo:
        return ErrorInfo(type="NonDeterminismError", message="code changed", attempts=2)

    assert await other.workflow_task(retaken, park) is TaskOutcome.PARKED

    async def finish(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        return commit(claim, [WorkflowCompleted(output=msgspec.Raw(b"0"), at=clock.now())])

    assert await worker.workflow_task(stalled, finish) is TaskOutcome.LEASE_LOST
    assert (await store.get_workflow("default", broken)).status == "parked"

    def v(name: str, **labels: str) -> float:
        return value(registry, name, **labels)

    assert v("flows_workflows_started_total", workflow="order") == 2
    assert v("flows_workflows_started_total", workflow="refund") == 1
    assert v("flows_workflows_completed_total", workflow="order") == 1
    assert v("flows_workflows_failed_total", workflow="order") == 1
    assert v("flows_workflows_completed_total", workflow="refund") == 0
    assert v("flows_workflows_cancelled_total", workflow="order") == 0
    assert v("flows_activity_attempts_total", activity="charge", outcome="ok") == 1
    assert v("flows_activity_attempts_total", activity="charge", outcome="retry") == 1
    assert v("flows_activity_attempts_total", activity="charge", outcome="failed") == 1
    assert v("flows_activity_failures_total", activity="charge") == 2
    assert v("flows_activity_attempt_duration_seconds_count", activity="charge") == 3
    assert v("flows_workflow_tasks_total", workflow="order", outcome="committed") == 3
    assert v("flows_workflow_tasks_total", workflow="refund", outcome="parked") == 1
    assert v("flows_workflow_tasks_total", workflow="refund", outcome="lease_lost") == 1
    assert v("flows_workflow_task_duration_seconds_count", workflow="order") == 3
    assert v("flows_workflow_task_duration_seconds_count", workflow="refund") == 2
    assert v("flows_lease_losses_total", kind="workflow_task") == 1
    assert v("flows_store_errors_total", operation="commit_workflow_task") == 1
    assert v("flows_dead_letters_total", workflow="refund") == 1

    # The exposition lists every documented metric with its help text.
    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    for name, help_text in METRICS.items():
        family = families[name.removesuffix("_total")]
        assert family.documentation == help_text


async def test_queue_gauges_are_sampled_per_shard() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry)
    clock = VirtualClock()
    store = MemoryStore(clock=clock)
    client = ObservedClient(store, observer)
    await client.start("order")
    clock.advance(timedelta(seconds=30))
    await client.start("order")
    await client.start("refund")
    clock.advance(timedelta(seconds=10))

    await observer.sample(store, None)
    assert value(registry, "flows_queue_depth", shard="order-shard-0") == 2
    assert value(registry, "flows_queue_depth", shard="refund-shard-0") == 1
    assert value(registry, "flows_queue_oldest_pending_age_seconds", shard="order-shard-0") == 40
    assert value(registry, "flows_queue_oldest_pending_age_seconds", shard="refund-shard-0") == 10
    assert value(registry, "flows_workflows", status="running") == 3
    assert value(registry, "flows_tasks_leased") == 0

    worker = ObservedWorker(store, observer, "w")
    claim = await worker.claim_workflow_task("refund")
    await store.park_workflow(claim.lease, ErrorInfo(type="Boom", message="x"))
    await observer.sample(store, None)
    # The refund shard has nothing queued any more: its series are gone, not stale.
    assert registry.get_sample_value("flows_queue_depth", {"shard": "refund-shard-0"}) is None
    assert (
        registry.get_sample_value(
            "flows_queue_oldest_pending_age_seconds", {"shard": "refund-shard-0"}
        )
        is None
    )
    assert value(registry, "flows_parked_workflows") == 1
    assert value(registry, "flows_workflows", status="parked") == 1

    await observer.sample(store, ["refund-shard-0"])  # a worker serving only that shard
    assert registry.get_sample_value("flows_queue_depth", {"shard": "order-shard-0"}) is None


class StatsDown(MemoryStore):
    """A store whose stats query fails (the database went away)."""

    async def stats(self, shard_keys: Sequence[str] | None = None) -> StoreStats:
        raise ConnectionError("stats unavailable")


async def test_run_sampler_samples_until_stopped_and_counts_failures() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, sample_interval=0.01)
    faults = Faults()
    store = MemoryStore(fault_hook=faults)
    await ObservedClient(store, observer).start("order")
    stop = asyncio.Event()
    sampler = asyncio.ensure_future(run_sampler(observer, store, stop=stop))

    await eventually(
        lambda: value(registry, "flows_queue_depth", shard="order-shard-0") == 1, timeout=10.0
    )

    stop.set()
    await asyncio.wait_for(sampler, 10)

    stop = asyncio.Event()
    sampler = asyncio.ensure_future(run_sampler(observer, StatsDown(), stop=stop))

    # it keeps going after a failure
    await eventually(
        lambda: value(registry, "flows_store_errors_total", operation="stats") >= 2, timeout=10.0
    )
    stop.set()
    await asyncio.wait_for(sampler, 10)


async def test_endpoint_and_asgi_app_serve_the_registry() -> None:
    registry = CollectorRegistry()
    observer = PrometheusObserver(registry, sample_interval=None)
    observer.workflow_started("order", "default")
    server = serve_metrics(0, registry=registry)
    try:
        assert server.server_address[0] == "127.0.0.1"
        url = f"http://127.0.0.1:{server.server_port}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=10) as response:
                body: bytes = response.read()
                return body.decode()

        text = await asyncio.to_thread(scrape)
    finally:
        server.shutdown()
        server.server_close()
    assert 'flows_workflows_started_total{workflow="order"} 1.0' in text

    transport = httpx.ASGITransport(app=metrics_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://ui") as http:
        response = await http.get("/")
    assert response.status_code == 200
    assert 'flows_workflows_started_total{workflow="order"} 1.0' in response.text


def test_bad_sample_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="sample_interval"):
        PrometheusObserver(CollectorRegistry(), sample_interval=0)


def test_without_prometheus_client_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "import flows_observe\n"
        "try:\n    import flows_observe.prometheus\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "flows[prometheus]" in out.stdout
