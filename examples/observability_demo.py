"""Metrics and traces of one workflow's life, across a worker restart.

    python -m examples.observability_demo    (from the repository root)

Runs an order workflow in memory with a PrometheusObserver and an OTelObserver: its
charge fails once and is retried, the first worker stops while the workflow waits for a
signal, a second worker finishes it. Prints the trace (one tree, from the HTTP request
that started the workflow) and the scraped metrics. Needs the extras ``prometheus``,
``otel`` and the OpenTelemetry SDK (all in ``dev``).
"""

from __future__ import annotations

import asyncio
import urllib.request
from datetime import timedelta
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry

import flows_core as flows
from flows_memory import MemoryStore
from flows_observe import CompositeObserver
from flows_observe.otel import OTelObserver
from flows_observe.prometheus import PrometheusObserver, serve_metrics

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("shop")
calls = {"charge": 0}


@flows.activity(
    "charge-card",
    retry=flows.RetryPolicy(initial_interval=timedelta(milliseconds=20), jitter=0),
)
async def charge(amount: int) -> str:
    calls["charge"] += 1
    with tracer.start_as_current_span("POST bank/charges"):  # the activity's own span
        if calls["charge"] == 1:
            raise ConnectionError("bank timed out")
        return f"ch_{amount}"


@flows.activity("send-email")
async def send_email(to: str) -> None:
    return None


@flows.workflow("order")
async def order(ctx: flows.WorkflowContext, amount: int) -> str:
    receipt = await ctx.execute(charge, amount)
    carrier = await ctx.wait_for_signal("shipped", str)
    await ctx.execute(send_email, "ada@example.com")
    return f"{receipt} shipped by {carrier}"


def tree(spans: tuple[ReadableSpan, ...]) -> list[str]:
    """The spans as an indented tree, children in start order."""
    children: dict[int | None, list[ReadableSpan]] = {}
    for span in spans:
        children.setdefault(span.parent.span_id if span.parent else None, []).append(span)
    lines: list[str] = []

    def walk(parent: int | None, depth: int) -> None:
        for span in sorted(children.get(parent, []), key=lambda s: s.start_time or 0):
            attributes = span.attributes or {}
            outcome = attributes.get("flows.outcome")
            note = f"  [{outcome}]" if outcome else ""
            attempt = attributes.get("flows.attempt")
            note += f" attempt {attempt}" if attempt else ""
            lines.append(f"{'  ' * depth}{span.name}{note}")
            assert span.context is not None
            walk(span.context.span_id, depth + 1)

    walk(None, 0)
    return lines


async def waiting_for_signal(engine: flows.Engine, workflow_id: str) -> None:
    for _ in range(500):
        history = await engine.history(workflow_id)
        if any(getattr(e, "name", "") == "shipped" for e in history):
            return
        await asyncio.sleep(0.02)
    raise TimeoutError("the workflow never waited for its signal")


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as response:
        body: bytes = response.read()
    return body.decode()


async def main() -> None:
    registry = CollectorRegistry()
    metrics = PrometheusObserver(registry, sample_interval=0.05)

    def observer() -> CompositeObserver:  # one per process
        return CompositeObserver([metrics, OTelObserver(provider)])

    store = MemoryStore()
    engine = flows.Engine(store, observer=observer())
    server = serve_metrics(0, registry=registry)

    def worker(activities: list[flows.Activity[Any, Any]]) -> flows.Worker:
        return flows.Worker(
            store, workflows=[order], activities=activities, poll_interval=0.02, observer=observer()
        )

    first = worker([charge])
    running = asyncio.ensure_future(first.run())
    with tracer.start_as_current_span("POST /orders"):
        run = await engine.start(order, 42)
    await waiting_for_signal(engine, run.workflow_id)
    await first.stop()  # the process goes away while the workflow waits
    await running

    second = worker([charge, send_email])
    running = asyncio.ensure_future(second.run())
    await engine.signal(run.workflow_id, "shipped", "DHL")
    print("result:", await run.result(timeout=10))
    await asyncio.sleep(0.1)  # one more queue sample
    text = await asyncio.to_thread(scrape, server.server_port)
    await second.stop()
    await running
    server.shutdown()

    print("\ntrace:")
    print("\n".join(tree(exporter.get_finished_spans())))
    print("\nmetrics (excerpt):")
    for line in text.splitlines():
        if line.startswith("flows_") and "_created" not in line and "_bucket" not in line:
            print(line)


if __name__ == "__main__":
    asyncio.run(main())
