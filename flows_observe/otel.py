"""OpenTelemetry traces for Flows (extra ``flows[otel]``: opentelemetry-api only).

``OTelObserver`` makes three kinds of spans:

* ``flows start <workflow>`` (PRODUCER) around ``Engine.start``, a child of whatever
  span is current in the caller; its context is stored with the workflow
  (``WorkflowStarted.trace_context``, W3C ``traceparent``/``tracestate``);
* ``flows workflow_task <workflow>`` (CONSUMER) for each workflow task, a child of the
  stored start context, in whichever worker process runs it, after any crash;
* ``flows activity <activity>`` (INTERNAL) for each activity attempt: a child of the
  workflow-task span when run inline, of the stored start context when run from the
  queue. It is the current span while the activity runs, so spans an activity makes
  itself are its children.

So one trace holds a workflow's whole life. Spans go wherever the tracer provider sends
them (the global one unless ``tracer_provider=`` is given); configuring an SDK and an
exporter is the application's business.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

try:
    from opentelemetry import trace
    from opentelemetry.context import Context
    from opentelemetry.propagators.textmap import TextMapPropagator
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "flows_observe.otel needs opentelemetry-api: install the extra `pip install 'flows[otel]'`"
    ) from exc

from flows_core._observe import (
    ActivityAttempt,
    AttemptOutcome,
    Observer,
    TaskOutcome,
    TraceContext,
    WorkflowTask,
)

__all__ = ["OTelObserver", "TRACER_NAME"]

TRACER_NAME: Final = "flows"

_FAILED_TASK: Final = frozenset({TaskOutcome.RETRY, TaskOutcome.PARKED, TaskOutcome.ERROR})
_FAILED_ATTEMPT: Final = frozenset(
    {AttemptOutcome.FAILED, AttemptOutcome.RETRY, AttemptOutcome.TIMEOUT}
)


def _workflow_attributes(
    workflow_name: str, workflow_id: str, tenant_id: str
) -> dict[str, str | int | bool]:
    """The span attributes that name a workflow."""
    return {
        "flows.workflow.name": workflow_name,
        "flows.workflow.id": workflow_id,
        "flows.tenant.id": tenant_id,
    }


class OTelObserver(Observer):
    """Traces workflow starts, workflow tasks and activity attempts (see the module doc).

    ``tracer_provider``: where spans go (the global provider when None).
    ``propagator``: how the start's context is written into and read from the stored
    carrier (W3C Trace Context when None).
    """

    wants_trace_context = True

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        *,
        propagator: TextMapPropagator | None = None,
    ) -> None:
        self.tracer = trace.get_tracer(TRACER_NAME, tracer_provider=tracer_provider)
        self.propagator: TextMapPropagator = propagator or TraceContextTextMapPropagator()

    def inject(self) -> TraceContext | None:
        carrier: TraceContext = {}
        self.propagator.inject(carrier)
        return carrier or None

    def extract(self, carrier: TraceContext | None) -> Context:
        """The context a stored carrier describes (an empty one, a new trace, if none):
        never the worker's own current span."""
        return self.propagator.extract(carrier or {}, context=Context())

    @contextmanager
    def workflow_start(
        self, workflow_name: str, tenant_id: str, workflow_id: str
    ) -> Iterator[TraceContext | None]:
        with self._span(
            f"flows start {workflow_name}",
            None,
            SpanKind.PRODUCER,
            _workflow_attributes(workflow_name, workflow_id, tenant_id),
        ):
            yield self.inject()

    @contextmanager
    def workflow_task(self, task: WorkflowTask) -> Iterator[None]:
        attributes = _workflow_attributes(task.workflow_name, task.workflow_id, task.tenant_id)
        attributes["flows.attempt"] = task.attempt
        parent = self.extract(task.trace_context)
        name = f"flows workflow_task {task.workflow_name}"
        with self._span(name, parent, SpanKind.CONSUMER, attributes) as span:
            try:
                with super().workflow_task(task):
                    yield
            finally:
                outcome = task.outcome or TaskOutcome.COMMITTED
                span.set_attribute("flows.outcome", outcome.value)
                if outcome in _FAILED_TASK:
                    span.set_status(Status(StatusCode.ERROR, f"workflow task {outcome.value}"))

    @contextmanager
    def activity_attempt(self, attempt: ActivityAttempt) -> Iterator[None]:
        attributes = _workflow_attributes(
            attempt.workflow_name, attempt.workflow_id, attempt.tenant_id
        ) | {
            "flows.activity.name": attempt.activity_name,
            "flows.activity.seq": attempt.seq,
            "flows.activity.inline": attempt.inline,
            "flows.attempt": attempt.attempt,
        }
        parent = None if attempt.inline else self.extract(attempt.trace_context)
        name = f"flows activity {attempt.activity_name}"
        with self._span(name, parent, SpanKind.INTERNAL, attributes) as span:
            try:
                with super().activity_attempt(attempt):
                    yield
            finally:
                outcome = attempt.outcome or AttemptOutcome.OK
                span.set_attribute("flows.outcome", outcome.value)
                if attempt.error is not None:
                    span.set_attribute("flows.error.type", attempt.error.type)
                if outcome in _FAILED_ATTEMPT:
                    described = str(attempt.error) if attempt.error else outcome.value
                    span.set_status(Status(StatusCode.ERROR, described))

    @contextmanager
    def _span(
        self,
        name: str,
        parent: Context | None,
        kind: SpanKind,
        attributes: dict[str, str | int | bool],
    ) -> Iterator[Span]:
        """A current span; an exception (not a cancellation) leaving it is recorded."""
        with self.tracer.start_as_current_span(
            name,
            context=parent,
            kind=kind,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield span
            except asyncio.CancelledError:
                span.set_attribute("flows.cancelled", True)
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                raise
