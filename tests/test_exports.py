"""Pin the public surface so a rename is a deliberate, visible change."""

import flows_core
import flows_memory

CORE = {
    "Activity",
    "ActivityFailed",
    "ActivityInfo",
    "ActivityTimeout",
    "CancelOutcome",
    "Cancelled",
    "EagerStarts",
    "Engine",
    "ErrorInfo",
    "FlowsError",
    "IllegalAwaitError",
    "InvalidArgument",
    "LeaseLost",
    "NonDeterminismError",
    "PayloadError",
    "PayloadTooLarge",
    "RetryPolicy",
    "Run",
    "ScheduleToCloseTimeout",
    "Sharder",
    "Store",
    "TenantRequired",
    "TerminalError",
    "Worker",
    "Workflow",
    "WorkflowAlreadyExists",
    "WorkflowCancelled",
    "WorkflowContext",
    "WorkflowFailed",
    "WorkflowInfo",
    "WorkflowNotFound",
    "WorkflowNotRegistered",
    "WorkflowNotRunning",
    "WorkflowStatus",
    "WorkflowTimeout",
    "activity",
    "activity_info",
    "gather",
    "heartbeat",
    "replay",
    "tenant",
    "workflow",
}


def test_core_exports() -> None:
    assert set(flows_core.__all__) >= CORE
    for name in flows_core.__all__:
        assert hasattr(flows_core, name), name


def test_memory_exports() -> None:
    assert {"MemoryStore", "TestEnvironment", "VirtualClock"} <= set(flows_memory.__all__)


def test_error_hierarchy() -> None:
    for name in (
        "WorkflowNotFound",
        "WorkflowFailed",
        "NonDeterminismError",
        "PayloadError",
        "WorkflowAlreadyExists",
        "ActivityFailed",
        "Cancelled",
        "TerminalError",
    ):
        assert issubclass(getattr(flows_core, name), flows_core.FlowsError)
    assert issubclass(flows_core.PayloadTooLarge, flows_core.PayloadError)
    assert issubclass(flows_core.IllegalAwaitError, flows_core.NonDeterminismError)
    assert issubclass(flows_core.InvalidArgument, ValueError)
