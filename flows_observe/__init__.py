"""Metrics and traces for Flows: observers the Engine and the Worker call.

* ``flows_observe.prometheus``: ``PrometheusObserver``, ``serve_metrics``, ``metrics_app``
  (extra ``flows[prometheus]``);
* ``flows_observe.otel``: ``OTelObserver``, OpenTelemetry spans for starts, workflow
  tasks and activity attempts, one trace per workflow across processes (extra
  ``flows[otel]``).

Without either extra this package still imports: the hooks themselves live in
flows_core and do nothing unless an observer is given.
"""

from flows_core._observe import (
    ActivityAttempt,
    AttemptOutcome,
    CompositeObserver,
    Observer,
    TaskKind,
    TaskOutcome,
    TraceContext,
    TraceContexts,
    WorkflowTask,
    run_sampler,
    trace_context_of,
    with_trace_context,
)

__all__ = [
    "ActivityAttempt",
    "AttemptOutcome",
    "CompositeObserver",
    "Observer",
    "TaskKind",
    "TaskOutcome",
    "TraceContext",
    "TraceContexts",
    "WorkflowTask",
    "run_sampler",
    "trace_context_of",
    "with_trace_context",
]
