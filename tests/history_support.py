"""Building blocks of hand-written histories for replay tests."""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from flows_core.events import WorkflowStarted

T0 = datetime(2030, 1, 1, tzinfo=UTC)


def started_event(name: str, value: object = None, *, at: datetime = T0) -> WorkflowStarted:
    """The WorkflowStarted of workflow ``name`` (version 1) with input ``value``."""
    return WorkflowStarted(
        name=name,
        version=1,
        workflow_id="wf-1",
        tenant_id="t",
        input=msgspec.Raw(msgspec.json.encode(value)),
        seed=42,
        at=at,
    )
