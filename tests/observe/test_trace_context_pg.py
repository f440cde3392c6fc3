"""The trace context stored with a workflow survives PostgreSQL: a worker on another
connection pool (another process) parents its spans to the start span."""

from __future__ import annotations

import msgspec
import pytest
from conftest_pg import drop_pg_store, make_pg_store
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from flows_core.events import WorkflowCompleted, WorkflowStarted
from flows_core.store import WorkflowTaskClaim, WorkflowTaskCommit
from flows_observe.otel import OTelObserver

from .harness import ObservedClient, ObservedWorker, commit

pytestmark = pytest.mark.pg


async def test_a_worker_on_another_pool_continues_the_trace(pg_dsn: str) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client_store = await make_pg_store(pg_dsn)
    worker_store = await make_pg_store(pg_dsn, client_store.schema)
    try:
        with provider.get_tracer("app").start_as_current_span("request"):
            workflow_id = await ObservedClient(client_store, OTelObserver(provider)).start("pg")
        [started] = await worker_store.get_history("default", workflow_id)
        assert isinstance(started, WorkflowStarted)
        assert started.trace_context is not None
        assert started.trace_context["traceparent"].startswith("00-")

        worker = ObservedWorker(worker_store, OTelObserver(provider), "pg-worker")
        claim = await worker.claim_workflow_task("pg")
        assert claim.history[0] == started

        async def finish(claim: WorkflowTaskClaim) -> WorkflowTaskCommit:
            done = WorkflowCompleted(output=msgspec.Raw(b"1"), at=worker_store.clock.now())
            return commit(claim, [done])

        await worker.workflow_task(claim, finish)
    finally:
        await worker_store.close()
        await drop_pg_store(client_store)
        provider.shutdown()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    start, task = spans["flows start pg"], spans["flows workflow_task pg"]
    assert start.context is not None
    assert task.parent is not None
    assert task.parent.span_id == start.context.span_id
    assert task.parent.trace_id == start.context.trace_id
