"""OTelObserver: spans of a start, workflow tasks and activity attempts, parented into
one trace through the context stored with the workflow, across worker processes."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from flows_core._observe import AttemptOutcome, Observer, TaskOutcome
from flows_core.events import ActivityCompleted, WorkflowCompleted, WorkflowStarted
from flows_core.store import WorkflowTaskClaim, WorkflowTaskCommit
from flows_memory import MemoryStore
from flows_observe.otel import OTelObserver

from .harness import ObservedClient, ObservedWorker, commit, schedule


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def provider(exporter: InMemorySpanExporter) -> Iterator[TracerProvider]:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider
    provider.shutdown()


def by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def parent_id(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.span_id


def trace_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def test_one_trace_across_a_worker_crash_and_the_activity_queue(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    store = MemoryStore()
    caller = provider.get_tracer("app")
    client = ObservedClient(store, OTelObserver(provider))
    with caller.start_as_current_span("POST /orders"):
        workflow_id = await client.start("order")

    # The stored WorkflowStarted carries the start span's context (W3C traceparent).
    [started] = await store.get_history("default", workflow_id)
    assert isinstance(started, WorkflowStarted)
    assert started.trace_context is not None
    assert set(started.trace_context) == {"traceparent"}

    async def charge() -> str:
        with caller.start_as_current_span("charge card"):  # the activity's own span
            return "paid"

    # Worker A runs the first workflow task: "charge" inline, "ship" through the queue;
    # then worker A is gone (another process, with its own observer, takes over).
    worker_a = ObservedWorker(store, OTelObserver(provider), "worker-a")
    claim = await worker_a.claim_workflow_task("order")

    async def first_task(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        charge_step, ship_step = schedule(claim, "charge", "ship")
        out = await worker_a.inline_activity(claim, "charge", charge_step.seq, charge)
        done = ActivityCompleted(
            seq=charge_step.seq, output=msgspec.Raw(msgspec.json.encode(out)), at=charge_step.at
        )
        return commit(claim, [charge_step, done, ship_step], queued=[ship_step])

    assert await worker_a.workflow_task(claim, first_task) is TaskOutcome.COMMITTED

    worker_b = ObservedWorker(store, OTelObserver(provider), "worker-b")

    async def ship() -> str:
        return "shipped"

    shipped = await worker_b.queued_activity(
        await worker_b.claim_activity_task("ship"), ship, max_attempts=3
    )
    assert shipped.trace_context == started.trace_context  # read back from the store

    async def last_task(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        done = WorkflowCompleted(output=msgspec.Raw(b'"ok"'), at=store.clock.now())
        return commit(claim, [done])

    claim = await worker_b.claim_workflow_task("order")
    assert await worker_b.workflow_task(claim, last_task) is TaskOutcome.COMMITTED

    spans = exporter.get_finished_spans()
    [request] = by_name(spans, "POST /orders")
    [start] = by_name(spans, "flows start order")
    first, last = by_name(spans, "flows workflow_task order")
    [charge_attempt] = by_name(spans, "flows activity charge")
    [own] = by_name(spans, "charge card")
    [ship_attempt] = by_name(spans, "flows activity ship")

    assert {trace_id(s) for s in spans} == {trace_id(request)}  # one trace
    assert parent_id(start) == span_id(request)
    assert start.kind is SpanKind.PRODUCER
    assert parent_id(first) == span_id(start)
    assert parent_id(last) == span_id(start)  # another worker, same parent
    assert first.kind is last.kind is SpanKind.CONSUMER
    assert parent_id(charge_attempt) == span_id(first)  # inline: under its task
    assert parent_id(own) == span_id(charge_attempt)  # the activity's own span
    assert parent_id(ship_attempt) == span_id(start)  # queued: under the start
    assert first.attributes is not None
    assert ship_attempt.attributes is not None
    assert first.attributes["flows.workflow.id"] == workflow_id
    assert first.attributes["flows.outcome"] == "committed"
    assert ship_attempt.attributes["flows.activity.inline"] is False
    assert ship_attempt.attributes["flows.outcome"] == "ok"


async def test_an_untraced_start_makes_each_task_a_root_span(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    store = MemoryStore()
    # The client has no tracing; the workers do.
    workflow_id = await ObservedClient(store, Observer()).start("order")
    [started] = await store.get_history("default", workflow_id)
    assert isinstance(started, WorkflowStarted)
    assert started.trace_context is None

    worker = ObservedWorker(store, OTelObserver(provider), "w")
    claim = await worker.claim_workflow_task("order")
    outer = provider.get_tracer("app")

    async def task(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        return commit(claim, [WorkflowCompleted(output=msgspec.Raw(b"1"), at=store.clock.now())])

    with outer.start_as_current_span("worker loop"):  # must not adopt the task
        await worker.workflow_task(claim, task)
    [span] = by_name(exporter.get_finished_spans(), "flows workflow_task order")
    assert span.parent is None


async def test_failures_mark_spans_as_errors(
    provider: TracerProvider, exporter: InMemorySpanExporter
) -> None:
    store = MemoryStore()
    observer = OTelObserver(provider)
    workflow_id = await ObservedClient(store, observer).start("order")
    worker = ObservedWorker(store, observer, "w")
    claim = await worker.claim_workflow_task("order")

    async def flaky() -> str:
        raise ConnectionError("card network down")

    async def first(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        [step] = schedule(claim, "charge")
        return commit(claim, [step], queued=[step])

    await worker.workflow_task(claim, first)
    attempt = await worker.queued_activity(
        await worker.claim_activity_task("charge"), flaky, max_attempts=3
    )
    assert attempt.outcome is AttemptOutcome.RETRY

    async def broken(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
        raise RuntimeError("replay blew up")

    attempt = await worker.queued_activity(
        await worker.claim_activity_task("charge"), flaky, max_attempts=2
    )
    assert attempt.outcome is AttemptOutcome.FAILED
    claim = await worker.claim_workflow_task("order")
    with pytest.raises(RuntimeError, match="replay blew up"):
        await worker.workflow_task(claim, broken)

    spans = exporter.get_finished_spans()
    retried = by_name(spans, "flows activity charge")
    assert [s.attributes["flows.attempt"] for s in retried if s.attributes] == [1, 2]
    assert all(s.status.status_code is StatusCode.ERROR for s in retried)
    assert [s.attributes["flows.outcome"] for s in retried if s.attributes] == ["retry", "failed"]
    assert "ConnectionError: card network down" in (retried[0].status.description or "")
    assert retried[0].attributes is not None
    assert retried[0].attributes["flows.error.type"] == "ConnectionError"
    _, crashed = by_name(spans, "flows workflow_task order")
    assert crashed.status.status_code is StatusCode.ERROR
    assert crashed.attributes is not None
    assert crashed.attributes["flows.outcome"] == "error"
    assert [e.name for e in crashed.events] == ["exception"]
    assert workflow_id


def test_inject_without_a_current_span_stores_nothing(provider: TracerProvider) -> None:
    observer = OTelObserver(provider)
    assert observer.inject() is None
    with provider.get_tracer("t").start_as_current_span("s") as span:
        carrier = observer.inject()
    assert carrier is not None
    assert carrier["traceparent"].split("-")[1] == format(span.get_span_context().trace_id, "032x")
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_without_opentelemetry_the_import_error_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import flows_observe, flows_core\n"  # the hooks need nothing
        "try:\n    import flows_observe.otel\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "flows[otel]" in out.stdout
