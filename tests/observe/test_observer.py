"""The pure observer hooks of flows_core: outcomes, composition, the stored trace
context (old histories still decode and replay), and flows_core's import boundary."""

from __future__ import annotations

import ast
import asyncio
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest

import flows_core as flows
from flows_core._errors import ErrorInfo, LeaseLost
from flows_core._observe import (
    MAX_TRACE_CONTEXT_BYTES,
    ActivityAttempt,
    AttemptOutcome,
    CompositeObserver,
    Observer,
    TaskOutcome,
    TraceContext,
    TraceContexts,
    WorkflowTask,
    trace_context_of,
    with_trace_context,
)
from flows_core.events import (
    ActivityScheduled,
    WorkflowStarted,
    decode_event,
    decode_events,
    encode_event,
)
from flows_core.store import WorkflowStatus
from flows_memory import MemoryStore

from .harness import ObservedClient

AT = datetime(2030, 1, 1, tzinfo=UTC)
TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

# A WorkflowStarted exactly as stored before trace contexts existed.
OLD_STARTED = (
    b'{"type":"workflow_started","name":"greet","version":1,"workflow_id":"wf-1",'
    b'"tenant_id":"default","input":"Ada","seed":42,"at":"2030-01-01T00:00:00Z"}'
)


@flows.workflow("greet")
async def greet(ctx: flows.WorkflowContext, name: str) -> str:
    return await ctx.execute(shout, name)


@flows.activity("shout")
async def shout(name: str) -> str:
    return name.upper()


def task(**changes: object) -> WorkflowTask:
    fields: dict[str, object] = {
        "workflow_name": "greet",
        "workflow_id": "wf-1",
        "tenant_id": "default",
        "attempt": 1,
    }
    return WorkflowTask(**{**fields, **changes})  # type: ignore[arg-type]


def attempt(**changes: object) -> ActivityAttempt:
    fields: dict[str, object] = {
        "activity_name": "shout",
        "workflow_name": "greet",
        "workflow_id": "wf-1",
        "tenant_id": "default",
        "seq": 1,
        "attempt": 1,
        "inline": True,
    }
    return ActivityAttempt(**{**fields, **changes})  # type: ignore[arg-type]


# -- the stored trace context --


def test_an_old_history_decodes_and_replays_like_a_traced_one() -> None:
    old = decode_event(OLD_STARTED)
    assert isinstance(old, WorkflowStarted)
    assert old.trace_context is None
    assert encode_event(old) == OLD_STARTED  # None is not written: old and new agree

    traced = msgspec.structs.replace(old, trace_context={"traceparent": TRACEPARENT})
    stored = encode_event(traced)
    assert b'"trace_context":{"traceparent":"' + TRACEPARENT.encode() + b'"}' in stored
    [again] = decode_events(b"[" + stored + b"]")
    assert again == traced
    assert trace_context_of([again]) == {"traceparent": TRACEPARENT}

    plain = flows.replay(greet, [old], AT)
    assert plain.park_error is None
    assert [type(e) for e in plain.new_events] == [ActivityScheduled]
    assert flows.replay(greet, [again], AT).new_events == plain.new_events


def test_trace_context_of_needs_a_started_event_first() -> None:
    assert trace_context_of([]) is None
    step = ActivityScheduled(seq=1, name="shout", input=msgspec.Raw(b'"a"'), at=AT)
    assert trace_context_of([step]) is None


async def test_with_trace_context_refuses_what_it_cannot_store() -> None:
    store = MemoryStore()
    client = ObservedClient(store, Observer())
    workflow_id = await client.start("greet", "Ada")
    [started] = await store.get_history("default", workflow_id)
    assert isinstance(started, WorkflowStarted)
    new = flows.store.NewWorkflow(
        tenant_id="default",
        workflow_id="wf-2",
        name="greet",
        version=1,
        shard_key="greet-shard-0",
        input=started.input,
        started=started,
    )
    assert with_trace_context(new, None) is new
    stamped = with_trace_context(new, {"traceparent": TRACEPARENT})
    assert isinstance(stamped.started, WorkflowStarted)
    assert stamped.started.trace_context == {"traceparent": TRACEPARENT}
    assert new.started == started  # not changed in place
    with pytest.raises(flows.InvalidArgument, match=r"dict\[str, str\]"):
        with_trace_context(new, {"traceparent": 1})  # type: ignore[dict-item]
    huge_state = {"traceparent": TRACEPARENT, "tracestate": "v=" + "x" * MAX_TRACE_CONTEXT_BYTES}
    trimmed = with_trace_context(new, huge_state).started
    assert isinstance(trimmed, WorkflowStarted)
    assert trimmed.trace_context == {"traceparent": TRACEPARENT}  # the trace stays whole
    with pytest.raises(flows.InvalidArgument, match=r"bytes, more than .* \['baggage'\]"):
        with_trace_context(new, {"baggage": "x" * MAX_TRACE_CONTEXT_BYTES})


# -- outcomes --


def test_a_workflow_task_outcome_comes_from_the_worker_or_the_exception() -> None:
    seen: list[tuple[str | None, float]] = []

    class Recorder(Observer):
        def workflow_task_ended(self, task: WorkflowTask, seconds: float) -> None:
            seen.append((task.outcome, seconds))

    observer = Recorder()
    with observer.workflow_task(task()):
        pass
    parked = task()
    with observer.workflow_task(parked):
        parked.outcome = TaskOutcome.PARKED
    for exc in (LeaseLost("gone"), asyncio.CancelledError(), OSError("store down")):
        with pytest.raises(type(exc)), observer.workflow_task(task()):
            raise exc
    assert [outcome for outcome, _ in seen] == [
        "committed",
        "parked",
        "lease_lost",
        "released",
        "error",
    ]
    assert all(seconds >= 0 for _, seconds in seen)


def test_an_attempt_outcome_says_ok_retry_failed_timeout_or_abandoned() -> None:
    error = ErrorInfo(type="ValueError", message="bad")
    timeout = ErrorInfo(type="HeartbeatTimeout", message="silent")
    assert attempt().record(None, retrying=False) is AttemptOutcome.OK
    assert attempt().record(error, retrying=True) is AttemptOutcome.RETRY
    assert attempt().record(error, retrying=False) is AttemptOutcome.FAILED
    assert attempt().record(timeout, retrying=True) is AttemptOutcome.TIMEOUT

    ended: list[AttemptOutcome | None] = []

    class Recorder(Observer):
        def activity_attempt_ended(self, attempt: ActivityAttempt, seconds: float) -> None:
            ended.append(attempt.outcome)

    observer = Recorder()
    with pytest.raises(asyncio.CancelledError), observer.activity_attempt(attempt()):
        raise asyncio.CancelledError
    with pytest.raises(flows.ActivityTimeout), observer.activity_attempt(attempt()):
        raise flows.ActivityTimeout("slow")
    recorded = attempt()
    with observer.activity_attempt(recorded):
        recorded.record(error, retrying=True)
    assert ended == [AttemptOutcome.ABANDONED, AttemptOutcome.TIMEOUT, AttemptOutcome.RETRY]


def test_the_default_observer_does_nothing_and_stores_no_context() -> None:
    observer = Observer()
    assert observer.inject() is None
    with observer.workflow_start("greet", "default", "wf-1") as context:
        assert context is None
    assert observer.sample_interval is None
    assert observer.wants_trace_context is False


# -- composition --


class Carrier(Observer):
    """Yields a fixed carrier and records the calls it gets."""

    def __init__(self, carrier: TraceContext | None, interval: float | None = None) -> None:
        self.carrier = carrier
        self.sample_interval = interval
        self.calls: list[str] = []

    def inject(self) -> TraceContext | None:
        return self.carrier

    @contextmanager
    def workflow_task(self, task: WorkflowTask) -> Iterator[None]:
        self.calls.append("enter")
        try:
            with super().workflow_task(task):
                yield
        finally:
            self.calls.append(f"exit {task.outcome}")

    def workflow_finished(self, workflow_name: str, tenant_id: str, status: WorkflowStatus) -> None:
        self.calls.append(f"finished {workflow_name} {status}")

    def store_error(self, operation: str) -> None:
        self.calls.append(f"store error {operation}")


def test_a_composite_calls_every_observer_with_one_shared_task() -> None:
    first = Carrier({"traceparent": TRACEPARENT}, interval=30)
    second = Carrier({"traceparent": "other", "baggage": "k=v"}, interval=5)
    both = CompositeObserver([first, second])
    assert both.sample_interval == 5
    assert both.inject() == {"traceparent": TRACEPARENT, "baggage": "k=v"}  # first wins
    with both.workflow_start("greet", "default", "wf-1") as context:
        assert context == {"traceparent": TRACEPARENT, "baggage": "k=v"}
    shared = task()
    with pytest.raises(LeaseLost), both.workflow_task(shared):
        raise LeaseLost("gone")
    both.workflow_finished("greet", "default", WorkflowStatus.COMPLETED)
    both.store_error("claim")
    expected = ["enter", "exit lease_lost", "finished greet completed", "store error claim"]
    assert first.calls == second.calls == expected
    assert CompositeObserver([Observer()]).inject() is None
    with pytest.raises(flows.InvalidArgument, match="expected an Observer"):
        CompositeObserver([object()])  # type: ignore[list-item]


# -- the trace context cache of queued activity attempts --


async def test_trace_contexts_remember_recent_workflows_and_read_the_rest() -> None:
    store = MemoryStore()

    class Traced(Observer):
        def inject(self) -> TraceContext | None:
            return {"traceparent": TRACEPARENT}

    traced = await ObservedClient(store, Traced()).start("greet", "Ada")
    plain = await ObservedClient(store, Observer()).start("greet", "Bob")
    contexts = TraceContexts(capacity=2)
    assert await contexts.lookup(store, "default", traced) == {"traceparent": TRACEPARENT}
    assert await contexts.lookup(store, "default", plain) is None
    contexts.remember("default", "wf-3", {"traceparent": "x"})
    assert len(contexts) == 2  # the least recently used one was dropped
    with pytest.raises(flows.WorkflowNotFound):
        await contexts.lookup(store, "default", "never-started")
    with pytest.raises(flows.InvalidArgument):
        TraceContexts(capacity=0)


# -- the import boundary of flows_core --

ALLOWED = {"msgspec", "uuid6", "cronsim"}
"""The core's own dependencies (pyproject ``dependencies``): cronsim parses schedules."""


def test_flows_core_imports_only_the_standard_library_and_its_dependencies() -> None:
    root = Path(flows.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top not in ALLOWED and top not in sys.stdlib_module_names:
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
