"""Flows: durable workflows as typed ``async def`` functions, replayed from history.

Import as ``import flows_core as flows``. See README.md for a tour.
"""

from ._activity_context import ActivityInfo, activity_info, heartbeat
from ._activity_runner import TRANSACTION_CONFLICT_RETRIES
from ._clock import Clock, SystemClock
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES
from ._context import MAX_STATUS_BYTES, ChildHandle, WorkflowContext, gather, race
from ._definitions import Activity, RetryPolicy, Workflow, activity, workflow
from ._eager import EagerStarts
from ._engine import DebouncedRun, Engine, Run, RunInfo, WorkflowInfo
from ._errors import (
    ActivityFailed,
    ActivityTimeout,
    Cancelled,
    ChildWorkflowCancelled,
    ChildWorkflowFailed,
    ErrorInfo,
    FlowsError,
    HeartbeatTimeout,
    IllegalAwaitError,
    InvalidArgument,
    LeaseLost,
    NonDeterminismError,
    PayloadError,
    PayloadTooLarge,
    ScheduleNotFound,
    ScheduleToCloseTimeout,
    StoreError,
    StoreUnavailable,
    TenantRequired,
    TerminalError,
    TransactionConflict,
    WorkflowAlreadyExists,
    WorkflowCancelled,
    WorkflowCodeError,
    WorkflowFailed,
    WorkflowNotDeadLettered,
    WorkflowNotFound,
    WorkflowNotRegistered,
    WorkflowNotRunning,
    WorkflowTerminated,
    WorkflowTimeout,
)
from ._fsck import FsckFinding, FsckReport, fsck
from ._observe import CompositeObserver, Observer
from ._public import publish
from ._replay import WORKFLOW_CODE_ERRORS, RaceResult, Step, awaited_signals, replay
from ._replayer import (
    ExportedHistory,
    PatchUsage,
    Replayer,
    ReplayProblem,
    ReplayReport,
    ReplayResult,
    check_histories,
    export_history,
    load_history,
)
from ._schedules import Overlap, ScheduleInfo, ScheduleSpec
from ._sharding import DEFAULT_SHARDS, HashSharder, Sharder, TenantSharder
from ._tenancy import DEFAULT_TENANT, current_tenant, tenant
from ._worker import Worker, WorkerStats
from .events import Event, event_summary
from .store import CancelOutcome, Store, StoreStats, TerminateOutcome, WorkflowStatus

__all__ = [
    "TRANSACTION_CONFLICT_RETRIES",
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
    "DebouncedRun",
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

publish(__name__, globals(), __all__)
