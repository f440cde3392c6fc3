"""Pin the public surface so a rename, an addition or a removal is a deliberate, visible
change (as httpx's tests/test_exported_members.py does).

Adding a public name: add it to the literal list of its package here, in the same
change. Internals (the replay machinery, the registry, test helpers such as
``flows_citus._cluster``) are imported from their private module, never from
``__all__``.
"""

from __future__ import annotations

import inspect
import pickle
import typing
from datetime import UTC, datetime
from types import ModuleType
from typing import Any

import msgspec
import pytest

import flows_core
import flows_core.events
import flows_core.store
import flows_memory

CORE = [
    "load_history",
    "export_history",
    "fsck",
    "check_histories",
    "Replayer",
    "ReplayResult",
    "ReplayReport",
    "ReplayProblem",
    "PatchUsage",
    "ExportedHistory",
    "DebouncedRun",
    "FsckFinding",
    "FsckReport",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DEFAULT_SHARDS",
    "DEFAULT_TENANT",
    "MAX_STATUS_BYTES",
    "WORKFLOW_CODE_ERRORS",
    "Activity",
    "ActivityFailed",
    "ActivityInfo",
    "ActivityTimeout",
    "CancelOutcome",
    "Cancelled",
    "ChildHandle",
    "ChildWorkflowCancelled",
    "ChildWorkflowFailed",
    "Clock",
    "CompositeObserver",
    "EagerStarts",
    "Engine",
    "ErrorInfo",
    "Event",
    "FlowsError",
    "HashSharder",
    "HeartbeatTimeout",
    "IllegalAwaitError",
    "InvalidArgument",
    "LeaseLost",
    "NonDeterminismError",
    "Observer",
    "PayloadError",
    "PayloadTooLarge",
    "RaceResult",
    "RetryPolicy",
    "Run",
    "Overlap",
    "ScheduleInfo",
    "ScheduleNotFound",
    "ScheduleSpec",
    "RunInfo",
    "ScheduleToCloseTimeout",
    "Sharder",
    "Step",
    "Store",
    "StoreError",
    "StoreStats",
    "StoreUnavailable",
    "SystemClock",
    "TenantRequired",
    "TenantSharder",
    "TerminalError",
    "TRANSACTION_CONFLICT_RETRIES",
    "TransactionConflict",
    "TerminateOutcome",
    "Worker",
    "WorkerStats",
    "Workflow",
    "WorkflowAlreadyExists",
    "WorkflowCancelled",
    "WorkflowCodeError",
    "WorkflowContext",
    "WorkflowFailed",
    "WorkflowInfo",
    "WorkflowNotDeadLettered",
    "WorkflowNotFound",
    "WorkflowNotRegistered",
    "WorkflowNotRunning",
    "WorkflowStatus",
    "WorkflowTerminated",
    "WorkflowTimeout",
    "activity",
    "activity_info",
    "awaited_signals",
    "current_tenant",
    "event_summary",
    "gather",
    "heartbeat",
    "race",
    "replay",
    "tenant",
    "workflow",
]

EVENTS = [
    "ActivityCompleted",
    "ActivityFailedEvent",
    "ActivityScheduled",
    "CancelRequested",
    "ChildCancelRequested",
    "ChildEndStatus",
    "ChildSignalRequested",
    "ChildStartRequested",
    "ChildWorkflowEnded",
    "DEADLINE_SEQ",
    "Event",
    "ParentClosePolicy",
    "ParentRef",
    "PatchMarker",
    "SideEffectRecorded",
    "SignalReceived",
    "SignalWaitStarted",
    "StepCancelled",
    "TimerFired",
    "TimerStarted",
    "WorkflowCancelledEvent",
    "WorkflowCompleted",
    "WorkflowContinuedAsNew",
    "WorkflowFailedEvent",
    "WorkflowStarted",
    "WorkflowTerminatedEvent",
    "decode_event",
    "decode_events",
    "encode_event",
    "event_summary",
]

STORE = [
    "ActivityResult",
    "ActivityRetry",
    "ActivityTaskClaim",
    "ActivityTaskSpec",
    "CachedHistory",
    "CancelOutcome",
    "ClaimRequest",
    "ClaimedTask",
    "EagerStart",
    "FsckExpiredLease",
    "FsckOrphan",
    "FsckScan",
    "FsckWorkflow",
    "GroupCommit",
    "FlowLimits",
    "RATE_GRACE",
    "LimitUsage",
    "SlotGrant",
    "SlotHolder",
    "HeartbeatReply",
    "Lease",
    "ListQuery",
    "NewWorkflow",
    "StartRequest",
    "Outbox",
    "OutboxMessage",
    "OutboxRecord",
    "Store",
    "StoreStats",
    "TERMINAL_STATUSES",
    "TerminateOutcome",
    "TimerTaskSpec",
    "TransactionWrite",
    "TransactionalActivities",
    "WorkerInfo",
    "WorkflowRecord",
    "WorkflowStatus",
    "WorkflowTaskClaim",
    "WorkflowCounts",
    "WorkflowTaskCommit",
    "ContinueAsNew",
    "RunArchive",
    "RunRecord",
    "cancel_outcome",
    "continued_length",
    "eager_start_claim",
    "list_key",
    "parked_cancellation",
    "round_trip_event",
    "signal_outcome",
    "stored_error",
    "stored_event",
    "stored_payload",
    "stored_text",
    "terminate_outcome",
    "terminated_error",
    "ScheduleAdvance",
    "ScheduleClaim",
    "ScheduleLease",
    "ScheduleRecord",
    "ScheduleStore",
    "DebounceStore",
    "PendingStart",
    "PendingStartClaim",
    "PendingStartLease",
]

MEMORY = ["FaultHook", "MemoryStore", "MemoryTransaction", "TestEnvironment", "VirtualClock"]

PG = [
    "PostgresStore",
    "SyncClient",
    "TENANT_SETTING",
    "check_schema",
    "embedded",
    "load_migrations",
    "migrate",
    "set_tenant",
    "set_tenant_sync",
]

CITUS = ["CitusLayout", "CitusStore", "SHARDINGS", "SyncClient", "detect", "detect_sync"]


def optional(name: str) -> ModuleType:
    """An adapter package, or a skip when its driver is not installed here."""
    try:
        return __import__(name)
    except ImportError as exc:
        pytest.skip(f"{name} is not importable here: {exc}")


PACKAGES: list[tuple[str, list[str]]] = [
    ("flows_core", CORE),
    ("flows_core.events", EVENTS),
    ("flows_core.store", STORE),
    ("flows_memory", MEMORY),
    ("flows_pg", PG),
    ("flows_citus", CITUS),
]


def module(name: str) -> ModuleType:
    if name.startswith("flows_core") or name == "flows_memory":
        return {
            "flows_core": flows_core,
            "flows_core.events": flows_core.events,
            "flows_core.store": flows_core.store,
            "flows_memory": flows_memory,
        }[name]
    return optional(name)


@pytest.mark.parametrize(("name", "expected"), PACKAGES, ids=[p[0] for p in PACKAGES])
def test_exports_are_exactly_the_public_names(name: str, expected: list[str]) -> None:
    mod = module(name)
    assert sorted(mod.__all__) == sorted(expected)
    assert len(mod.__all__) == len(set(mod.__all__)), "a name is listed twice"
    for export in mod.__all__:
        assert hasattr(mod, export), f"{name}.{export} is listed but missing"


@pytest.mark.parametrize(("name", "expected"), PACKAGES, ids=[p[0] for p in PACKAGES])
def test_public_names_have_their_public_module(name: str, expected: list[str]) -> None:
    """``flows_core.Engine.__module__ == "flows_core"``: what is defined in a private
    module is shown under the package that exports it."""
    mod = module(name)
    for export in mod.__all__:
        obj = getattr(mod, export)
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue
        owner = obj.__module__
        assert not any(part.startswith("_") for part in owner.split(".")), (
            f"{name}.{export}.__module__ is {owner!r}, a private module"
        )
        assert owner == name or owner.startswith(f"{name.split('.')[0]}."), (name, export, owner)


def test_internals_are_not_exported() -> None:
    for internal in ("WorkflowInstance", "Activation", "WorkflowRegistry", "Planner"):
        assert internal not in flows_core.__all__
        assert not hasattr(flows_core, internal), internal
    citus = optional("flows_citus")
    assert "_cluster" not in citus.__all__


def test_engine_history_returns_public_event_classes() -> None:
    hints = typing.get_type_hints(flows_core.Engine.history)
    assert hints["return"] == list[flows_core.events.Event]
    for event in typing.get_args(flows_core.events.Event):
        assert event.__module__ == "flows_core.events"
        assert getattr(flows_core.events, event.__name__) is event


@pytest.mark.parametrize(("name", "expected"), PACKAGES, ids=[p[0] for p in PACKAGES])
def test_annotations_still_resolve(name: str, expected: list[str]) -> None:
    """Moving a class's ``__module__`` must not break ``typing.get_type_hints`` on it
    (msgspec uses it; a function's hints resolve in its ``__globals__`` instead)."""
    mod = module(name)
    for export in mod.__all__:
        obj = getattr(mod, export)
        if isinstance(obj, type):
            typing.get_type_hints(obj)


def test_structs_still_encode_decode_and_pickle() -> None:
    error = flows_core.ErrorInfo(type="OSError", message="disk full", attempts=2)
    assert pickle.loads(pickle.dumps(error)) == error
    assert msgspec.json.decode(msgspec.json.encode(error), type=flows_core.ErrorInfo) == error
    now = datetime(2030, 1, 1, tzinfo=UTC)
    info = flows_core.WorkflowInfo(
        workflow_id="w",
        tenant_id="t",
        name="n",
        version=1,
        status=flows_core.WorkflowStatus.FAILED,
        output=None,
        error=error,
        created_at=now,
        updated_at=now,
        history_length=3,
        cancel_requested=False,
    )
    assert pickle.loads(pickle.dumps(info)) == info
    assert msgspec.json.decode(msgspec.json.encode(info), type=flows_core.WorkflowInfo) == info
    policy = flows_core.RetryPolicy(max_attempts=3)
    assert pickle.loads(pickle.dumps(policy)) == policy


def test_error_hierarchy() -> None:
    for name in CORE:
        obj: Any = getattr(flows_core, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, flows_core.FlowsError), name
    assert issubclass(flows_core.PayloadTooLarge, flows_core.PayloadError)
    assert issubclass(flows_core.IllegalAwaitError, flows_core.NonDeterminismError)
    assert issubclass(flows_core.InvalidArgument, ValueError)
    assert issubclass(flows_core.WorkflowTimeout, flows_core.WorkflowFailed)
    assert issubclass(flows_core.StoreUnavailable, flows_core.StoreError)
