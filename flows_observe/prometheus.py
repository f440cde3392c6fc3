"""Prometheus metrics for Flows (extra ``flows[prometheus]``).

``PrometheusObserver`` counts what Engines and Workers report to it and, sampled from
``store.stats()``, exports queue depth and backlog age per shard::

    observer = PrometheusObserver()
    serve_metrics(9464)                       # http://127.0.0.1:9464/metrics
    worker = flows.Worker(store, workflows=[...], observer=observer)
    engine = flows.Engine(store, observer=observer)

``metrics_app()`` is the same endpoint as an ASGI app, to mount in a web service.
Metric names are listed in ``METRICS`` (and in the README).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final
from wsgiref.simple_server import WSGIServer

try:
    from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
    from prometheus_client import make_asgi_app as _make_asgi_app
    from prometheus_client import start_http_server as _start_http_server
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "flows_observe.prometheus needs prometheus_client: install the extra "
        "`pip install 'flows[prometheus]'`"
    ) from exc

from flows_core._errors import ErrorInfo
from flows_core._observe import ActivityAttempt, AttemptOutcome, Observer, TaskKind, WorkflowTask
from flows_core.store import Store, WorkflowStatus

__all__ = ["METRICS", "PrometheusObserver", "metrics_app", "serve_metrics"]

DURATION_BUCKETS: Final = (
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
)  # fmt: skip
"""Histogram buckets (seconds): from a millisecond step to a five-minute activity."""

METRICS: Final = {
    "flows_workflows_started_total": "workflows started, by workflow name",
    "flows_workflows_completed_total": "workflows completed, by workflow name",
    "flows_workflows_failed_total": "workflows failed, by workflow name",
    "flows_workflows_cancelled_total": "workflows cancelled, by workflow name",
    "flows_workflows_terminated_total": "workflows terminated, by workflow name",
    "flows_workflow_tasks_total": "workflow tasks run, by workflow name and outcome",
    "flows_workflow_task_duration_seconds": "workflow-task latency, by workflow name",
    "flows_activity_attempts_total": "activity attempts, by activity name and outcome",
    "flows_activity_failures_total": "activity attempts that did not succeed, by activity",
    "flows_activity_attempt_duration_seconds": "activity attempt latency, by activity name",
    "flows_lease_losses_total": "leases found lost, by task kind",
    "flows_store_errors_total": "failed store calls, by operation",
    "flows_dead_letters_total": "workflows dead-lettered (parked), by workflow name",
    "flows_queue_depth": "claimable tasks now, by shard key (sampled)",
    "flows_queue_oldest_pending_age_seconds": "age of the oldest claimable task, by shard",
    "flows_parked_workflows": "workflows dead-lettered (parked) now (sampled)",
    "flows_tasks_leased": "tasks leased by a worker now (sampled)",
    "flows_workflows": "workflows per status now (sampled)",
}
"""Every metric this module exports, with what it counts."""


class PrometheusObserver(Observer):
    """Counts workflows, workflow tasks, activity attempts, lease losses, store errors
    and dead letters into ``registry`` (prometheus_client's default registry when None),
    and every ``sample_interval`` seconds samples queue gauges from the store.

    Started workflows are counted by the Engine that starts them: give the client's
    Engine an observer too. Queue gauges describe the store (or the worker's shards),
    not the worker: several workers export the same values, aggregate with ``max``.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        sample_interval: float | None = 15.0,
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        if sample_interval is not None and sample_interval <= 0:
            raise ValueError(f"sample_interval must be positive or None, got {sample_interval}")
        self.registry = REGISTRY if registry is None else registry
        self.sample_interval = sample_interval
        reg = self.registry

        def counter(name: str, labels: Sequence[str]) -> Counter:
            return Counter(name, METRICS[name + "_total"], labels, registry=reg)

        def gauge(name: str, labels: Sequence[str] = ()) -> Gauge:
            return Gauge(name, METRICS[name], labels, registry=reg)

        def histogram(name: str, labels: Sequence[str]) -> Histogram:
            return Histogram(name, METRICS[name], labels, buckets=buckets, registry=reg)

        self.started = counter("flows_workflows_started", ["workflow"])
        self.finished: dict[WorkflowStatus, Counter] = {
            WorkflowStatus.COMPLETED: counter("flows_workflows_completed", ["workflow"]),
            WorkflowStatus.FAILED: counter("flows_workflows_failed", ["workflow"]),
            WorkflowStatus.CANCELLED: counter("flows_workflows_cancelled", ["workflow"]),
            WorkflowStatus.TERMINATED: counter("flows_workflows_terminated", ["workflow"]),
        }
        self.workflow_tasks = counter("flows_workflow_tasks", ["workflow", "outcome"])
        self.workflow_task_seconds = histogram("flows_workflow_task_duration_seconds", ["workflow"])
        self.attempts = counter("flows_activity_attempts", ["activity", "outcome"])
        self.failures = counter("flows_activity_failures", ["activity"])
        self.attempt_seconds = histogram("flows_activity_attempt_duration_seconds", ["activity"])
        self.lease_losses = counter("flows_lease_losses", ["kind"])
        self.store_errors = counter("flows_store_errors", ["operation"])
        self.parked = counter("flows_dead_letters", ["workflow"])
        self.queue_depth = gauge("flows_queue_depth", ["shard"])
        self.oldest_age = gauge("flows_queue_oldest_pending_age_seconds", ["shard"])
        self.parked_now = gauge("flows_parked_workflows")
        self.leased = gauge("flows_tasks_leased")
        self.workflows = gauge("flows_workflows", ["status"])
        self._shown: dict[Gauge, set[str]] = {}

    # -- counters --

    def workflow_started(self, workflow_name: str, tenant_id: str) -> None:
        self.started.labels(workflow_name).inc()

    def workflow_finished(self, workflow_name: str, tenant_id: str, status: WorkflowStatus) -> None:
        counter = self.finished.get(WorkflowStatus(status))
        if counter is not None:
            counter.labels(workflow_name).inc()

    def workflow_task_ended(self, task: WorkflowTask, seconds: float) -> None:
        assert task.outcome is not None
        self.workflow_tasks.labels(task.workflow_name, task.outcome.value).inc()
        self.workflow_task_seconds.labels(task.workflow_name).observe(seconds)

    def activity_attempt_ended(self, attempt: ActivityAttempt, seconds: float) -> None:
        assert attempt.outcome is not None
        self.attempts.labels(attempt.activity_name, attempt.outcome.value).inc()
        if attempt.outcome is not AttemptOutcome.OK:
            self.failures.labels(attempt.activity_name).inc()
        self.attempt_seconds.labels(attempt.activity_name).observe(seconds)

    def workflow_parked(self, workflow_name: str, tenant_id: str, error: ErrorInfo) -> None:
        self.parked.labels(workflow_name).inc()

    def lease_lost(self, kind: TaskKind, workflow_name: str) -> None:
        self.lease_losses.labels(kind).inc()

    def store_error(self, operation: str) -> None:
        self.store_errors.labels(operation).inc()

    # -- sampled gauges --

    async def sample(self, store: Store, shard_keys: Sequence[str] | None) -> None:
        """Set the queue gauges from ``store.stats(shard_keys)``; the age of each
        non-empty shard comes from one more ``stats([shard])`` call."""
        stats = await store.stats(shard_keys)
        ages: dict[str, float] = {}
        for shard, depth in stats.queue_depth.items():
            if depth > 0:
                age = (await store.stats([shard])).oldest_pending_age
                ages[shard] = 0.0 if age is None else age.total_seconds()
        self._set(self.queue_depth, {s: float(d) for s, d in stats.queue_depth.items()})
        self._set(self.oldest_age, ages)
        self._set(self.workflows, {str(s): float(n) for s, n in stats.workflows.items()})
        self.parked_now.set(stats.dead_letters)
        self.leased.set(stats.in_flight)

    def _set(self, gauge: Gauge, values: dict[str, float]) -> None:
        """Set one labelled child per key; drop the children of keys now absent."""
        for key, value in values.items():
            gauge.labels(key).set(value)
        for gone in self._shown.get(gauge, set()) - values.keys():
            gauge.remove(gone)
        self._shown[gauge] = set(values)


def serve_metrics(
    port: int, host: str = "127.0.0.1", registry: CollectorRegistry | None = None
) -> WSGIServer:
    """Serve ``/metrics`` on ``host:port`` from a daemon thread (prometheus_client's
    server); loopback unless told otherwise. Port 0 picks a free port (see
    ``server.server_port``). ``server.shutdown()`` stops it."""
    server, _thread = _start_http_server(port, addr=host, registry=_registry(registry))
    return server


def metrics_app(registry: CollectorRegistry | None = None) -> Callable[..., Any]:
    """The metrics endpoint as an ASGI app (mount it at ``/metrics``)."""
    app: Callable[..., Any] = _make_asgi_app(registry=_registry(registry))
    return app


def _registry(registry: CollectorRegistry | None) -> CollectorRegistry:
    return REGISTRY if registry is None else registry
