"""Child workflows and the per-shard outbox: which messages a commit writes, and how a
worker delivers them (DESIGN idea 9).

A workflow task's commit writes its messages to other workflows into its own outbox
(``WorkflowTaskCommit.outbox``, the sender's shard key, the sender's transaction). The
worker that committed delivers them at once; any worker of the shard delivers those
left over (``claim_outbox``) after ``delay``. Each delivery is one ordinary write on
the target workflow, idempotent, so a crash between it and the deletion of the message
repeats it harmlessly:

* a child start is a ``start_workflow`` whose WorkflowStarted names its parent; if the
  id is taken by this very child, nothing happens; by another workflow, the parent is
  told the child failed (``ChildWorkflowAlreadyExists``);
* a signal to a child and a completion notice to a parent go through ``deliver_once``
  with a key derived from the sender and its step;
* a cancel or terminate of a child is idempotent by nature.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec
import uuid6

from ._errors import ErrorInfo, WorkflowAlreadyExists, WorkflowNotFound, WorkflowNotRunning
from ._replay import WorkflowInstance
from ._sharding import Sharder, key_for
from .events import (
    CancelRequested,
    ChildCancelRequested,
    ChildEndStatus,
    ChildSignalRequested,
    ChildStartRequested,
    ChildWorkflowEnded,
    Event,
    ParentRef,
    SignalReceived,
    StepCancelled,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)
from .store import Lease, NewWorkflow, Outbox, OutboxMessage, OutboxRecord, Store

__all__ = [
    "CancelTarget",
    "NotifyParent",
    "SignalTarget",
    "StartChild",
    "TerminateTarget",
    "INLINE_DELIVERIES",
    "deliver",
    "deliver_all",
    "outbox_for",
    "outbox_of",
]

log = logging.getLogger("flows.worker")


class StartChild(msgspec.Struct, frozen=True, kw_only=True, tag="start_child"):
    new: NewWorkflow


class SignalTarget(msgspec.Struct, frozen=True, kw_only=True, tag="signal"):
    tenant_id: str
    workflow_id: str
    event: SignalReceived
    key: str


class CancelTarget(msgspec.Struct, frozen=True, kw_only=True, tag="cancel"):
    tenant_id: str
    workflow_id: str
    event: CancelRequested


class TerminateTarget(msgspec.Struct, frozen=True, kw_only=True, tag="terminate"):
    tenant_id: str
    workflow_id: str
    event: WorkflowTerminatedEvent


class NotifyParent(msgspec.Struct, frozen=True, kw_only=True, tag="child_ended"):
    tenant_id: str
    workflow_id: str
    event: ChildWorkflowEnded


Body = StartChild | SignalTarget | CancelTarget | TerminateTarget | NotifyParent

_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(Body)

INLINE_DELIVERIES: Final = 64
"""Messages of one commit its worker delivers itself, at once; a bigger fan-out's others
are claimable at once by any worker of the shard (``claim_outbox``), which spreads
the delivery of 10,000 child starts over every worker."""

DELIVERY_CONCURRENCY: Final = 32
"""Deliveries a worker runs at once (each is one transaction on its target)."""

NOT_FOUND_PATIENCE: Final = timedelta(minutes=10)
"""How long a signal, cancel or terminate for a workflow that does not exist is kept and
retried: its start may still be on its way (an earlier message whose delivery failed)."""


class TargetNotYetThere(Exception):
    """A message's target does not exist (yet): the message is left for a later claim."""


def outbox_of(store: Store) -> Outbox | None:
    """The store's outbox capability, or None if it has none."""
    return store if isinstance(store, Outbox) else None


def _message(body: Body, delay: timedelta) -> OutboxMessage:
    return OutboxMessage(
        message_id=str(uuid6.uuid7()), body=msgspec.Raw(_encoder.encode(body)), delay=delay
    )


def _close(child: ChildStartRequested, tenant: str, reason: str, at: datetime) -> Body | None:
    """What the parent-close policy of ``child`` sends it when the parent lets it go."""
    if child.parent_close_policy == "terminate":
        event = WorkflowTerminatedEvent(reason=reason, at=at)
        return TerminateTarget(tenant_id=tenant, workflow_id=child.workflow_id, event=event)
    if child.parent_close_policy == "cancel":
        cancel = CancelRequested(reason=reason, at=at)
        return CancelTarget(tenant_id=tenant, workflow_id=child.workflow_id, event=cancel)
    return None


def outbox_for(
    events: Sequence[Event],
    instance: WorkflowInstance,
    lease: Lease,
    sharder: Sharder,
    delay: timedelta,
) -> list[OutboxMessage]:
    """The messages a commit of ``events`` (decided by ``instance``) sends to other
    workflows: child starts, signals and cancels; the parent-close policy applied to
    children whose step was cancelled, or that are still open when the workflow ends;
    the completion notice to this workflow's parent."""
    tenant, parent_id = lease.tenant_id, lease.workflow_id
    bodies: list[Body] = []
    for e in events:
        match e:
            case ChildStartRequested():
                seed = random.Random(f"{instance.seed}:{parent_id}:child:{e.seq}").getrandbits(63)
                started = WorkflowStarted(
                    name=e.name,
                    version=e.version,
                    workflow_id=e.workflow_id,
                    tenant_id=tenant,
                    input=e.input,
                    seed=seed,
                    at=e.at,
                    parent=ParentRef(workflow_id=parent_id, shard_key=lease.shard_key, seq=e.seq),
                )
                new = NewWorkflow(
                    tenant_id=tenant,
                    workflow_id=e.workflow_id,
                    name=e.name,
                    version=e.version,
                    shard_key=key_for(sharder, e.name, e.workflow_id, tenant),
                    input=e.input,
                    started=started,
                )
                bodies.append(StartChild(new=new))
            case ChildSignalRequested():
                signal = SignalReceived(
                    name=e.name, payload=e.payload, signal_id=f"{parent_id}#{e.seq}", at=e.at
                )
                key = f"child-signal:{parent_id}#{e.seq}"
                bodies.append(
                    SignalTarget(tenant_id=tenant, workflow_id=e.workflow_id, event=signal, key=key)
                )
            case ChildCancelRequested():
                cancel = CancelRequested(reason=e.reason, at=e.at)
                bodies.append(
                    CancelTarget(tenant_id=tenant, workflow_id=e.workflow_id, event=cancel)
                )
            case StepCancelled() if e.seq in instance.children:
                reason = f"parent {parent_id!r} stopped waiting: {e.reason}"
                body = _close(instance.children[e.seq], tenant, reason, e.at)
                if body is not None:
                    bodies.append(body)
            case WorkflowCompleted() | WorkflowFailedEvent() | WorkflowCancelledEvent():
                for child in instance.open_children.values():
                    body = _close(child, tenant, f"parent {parent_id!r} ended", e.at)
                    if body is not None:
                        bodies.append(body)
                if instance.parent is not None:
                    bodies.append(_notice(tenant, parent_id, instance.parent, e))
            case _:
                pass
    return [
        _message(body, delay if i < INLINE_DELIVERIES else timedelta(0))
        for i, body in enumerate(bodies)
    ]


def _notice(
    tenant: str,
    child_id: str,
    parent: ParentRef,
    end: WorkflowCompleted | WorkflowFailedEvent | WorkflowCancelledEvent,
) -> NotifyParent:
    if isinstance(end, WorkflowCompleted):
        ended = ChildWorkflowEnded(
            seq=parent.seq, workflow_id=child_id, status="completed", output=end.output, at=end.at
        )
    elif isinstance(end, WorkflowFailedEvent):
        ended = ChildWorkflowEnded(
            seq=parent.seq, workflow_id=child_id, status="failed", error=end.error, at=end.at
        )
    else:
        error = end.error or ErrorInfo(type="Cancelled", message="cancelled")
        ended = ChildWorkflowEnded(
            seq=parent.seq, workflow_id=child_id, status="cancelled", error=error, at=end.at
        )
    return NotifyParent(tenant_id=tenant, workflow_id=parent.workflow_id, event=ended)


def notice_key(parent: NotifyParent) -> str:
    """The once-only key of a completion notice: one per child step of the parent."""
    return f"child-ended:{parent.event.seq}"


async def deliver(store: Store, outbox: Outbox, record: OutboxRecord) -> None:
    """Deliver one outbox message to its target, idempotently (see the module doc).
    A target that is gone or finished takes nothing: the message is done."""
    body = _decoder.decode(record.body)
    try:
        return await _deliver(store, outbox, body, record)
    except WorkflowNotFound:
        if isinstance(body, StartChild | NotifyParent):
            return  # a parent that is gone takes no notice
        if store.clock.now() - body.event.at < NOT_FOUND_PATIENCE:
            raise TargetNotYetThere(body.workflow_id) from None
    except WorkflowNotRunning:
        pass


async def _deliver(store: Store, outbox: Outbox, body: Body, record: OutboxRecord) -> None:
    match body:
        case StartChild(new=new):
            await _start_child(store, outbox, new, record)
        case SignalTarget():
            await outbox.deliver_once(body.tenant_id, body.workflow_id, body.event, body.key)
        case CancelTarget():
            await store.cancel_workflow(body.tenant_id, body.workflow_id, body.event)
            await close_ended(store, body.tenant_id, body.workflow_id)
        case TerminateTarget():
            await store.terminate_workflow(body.tenant_id, body.workflow_id, body.event)
            await close_ended(store, body.tenant_id, body.workflow_id)
        case NotifyParent():
            await outbox.deliver_once(
                body.tenant_id, body.workflow_id, body.event, notice_key(body)
            )


async def _start_child(
    store: Store, outbox: Outbox, new: NewWorkflow, record: OutboxRecord
) -> None:
    try:
        await store.start_workflow(new)
        return
    except WorkflowAlreadyExists:
        pass
    history = await store.get_history(new.tenant_id, new.workflow_id)
    first = history[0] if history else None
    parent = new.started.parent if isinstance(new.started, WorkflowStarted) else None
    if isinstance(first, WorkflowStarted) and first.parent == parent:
        return  # started before: this is a repeated delivery
    assert parent is not None
    error = ErrorInfo(
        type="ChildWorkflowAlreadyExists",
        message=f"workflow id {new.workflow_id!r} is taken by a workflow that is not this "
        "child (give the child another workflow_id)",
    )
    ended = ChildWorkflowEnded(
        seq=parent.seq, workflow_id=new.workflow_id, status="failed", error=error, at=new.started.at
    )
    notice = NotifyParent(tenant_id=record.tenant_id, workflow_id=record.workflow_id, event=ended)
    await outbox.deliver_once(record.tenant_id, record.workflow_id, ended, notice_key(notice))


async def deliver_all(store: Store, records: Sequence[OutboxRecord]) -> int:
    """Deliver ``records`` (at most DELIVERY_CONCURRENCY at once) and delete those
    delivered; a failed delivery is logged and left for a later claim. Returns how
    many were delivered."""
    outbox = outbox_of(store)
    if outbox is None or not records:
        return 0
    gate = asyncio.Semaphore(DELIVERY_CONCURRENCY)
    done: list[OutboxRecord] = []
    # Messages to one target go in order (a child's start before its signal), each
    # target's after the previous one was delivered; targets concurrently.
    by_target: dict[tuple[str, str], list[OutboxRecord]] = {}
    for record in records:
        by_target.setdefault(target_of(record), []).append(record)

    async def in_order(group: list[OutboxRecord]) -> None:
        async with gate:
            for record in group:
                try:
                    await deliver(store, outbox, record)
                except Exception as exc:
                    log.warning(
                        "outbox message %s of workflow %s not delivered (a worker retries it): %r",
                        record.message_id,
                        record.workflow_id,
                        exc,
                    )
                    return
                done.append(record)

    groups = list(by_target.values())
    if len(groups) == 1:
        await in_order(groups[0])
    else:
        await asyncio.gather(*(in_order(g) for g in groups))
    if done:
        await outbox.delete_outbox(done)
    return len(done)


def closing_bodies(history: Sequence[Event], tenant: str, workflow_id: str) -> list[Body]:
    """What a workflow ended from outside (terminated; a parked one cancelled) owes the
    others, from its final history: the notice to its parent and the parent-close policy
    of its open children. Nothing for a workflow that ended by its own commit (which
    sent them) or has not ended."""
    if not history or not isinstance(history[-1], WorkflowTerminatedEvent | WorkflowCancelledEvent):
        return []
    end = history[-1]
    if isinstance(end, WorkflowCancelledEvent) and not (
        len(history) > 1 and isinstance(history[-2], CancelRequested)
    ):
        return []  # cancelled by its own code: its commit sent everything
    first = history[0]
    open_children: dict[int, ChildStartRequested] = {}
    for event in history:
        if isinstance(event, ChildStartRequested):
            open_children[event.seq] = event
        elif isinstance(event, ChildWorkflowEnded | StepCancelled):
            open_children.pop(event.seq, None)
    reason = f"parent {workflow_id!r} ended"
    bodies = [b for c in open_children.values() if (b := _close(c, tenant, reason, end.at))]
    parent = first.parent if isinstance(first, WorkflowStarted) else None
    if parent is not None:
        if isinstance(end, WorkflowTerminatedEvent):
            error = ErrorInfo(type="WorkflowTerminated", message=end.reason)
            status: ChildEndStatus = "terminated"
        else:
            error = end.error or ErrorInfo(type="Cancelled", message="cancelled")
            status = "cancelled"
        ended = ChildWorkflowEnded(
            seq=parent.seq, workflow_id=workflow_id, status=status, error=error, at=end.at
        )
        bodies.append(NotifyParent(tenant_id=tenant, workflow_id=parent.workflow_id, event=ended))
    return bodies


async def close_ended(store: Store, tenant_id: str, workflow_id: str) -> None:
    """After a workflow may have been ended from outside: deliver what it owes its
    parent and children (``closing_bodies``). Idempotent; the Engine calls it after
    ``terminate`` and ``cancel``, deliveries after a terminate or cancel message."""
    outbox = outbox_of(store)
    if outbox is None:
        return
    history = await store.get_history(tenant_id, workflow_id)
    for body in closing_bodies(history, tenant_id, workflow_id):
        record = OutboxRecord(
            tenant_id=tenant_id,
            workflow_id=workflow_id,
            shard_key="",
            message_id="",
            body=msgspec.Raw(_encoder.encode(body)),
        )
        await deliver(store, outbox, record)


def target_of(record: OutboxRecord) -> tuple[str, str]:
    """The (tenant, workflow id) a message is for."""
    body = _decoder.decode(record.body)
    if isinstance(body, StartChild):
        return body.new.tenant_id, body.new.workflow_id
    return body.tenant_id, body.workflow_id


def records_of(lease: Lease, messages: Sequence[OutboxMessage]) -> list[OutboxRecord]:
    """The stored form of messages a commit under ``lease`` wrote."""
    return [
        OutboxRecord(
            tenant_id=lease.tenant_id,
            workflow_id=lease.workflow_id,
            shard_key=lease.shard_key,
            message_id=m.message_id,
            body=m.body,
        )
        for m in messages
    ]


def describe(body: msgspec.Raw) -> dict[str, Any]:
    """An outbox message body as plain JSON (for operators and tests)."""
    value: dict[str, Any] = msgspec.json.decode(body)
    return value
