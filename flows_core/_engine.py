"""The client: start, signal, cancel, query and wait for workflows."""

from __future__ import annotations

import asyncio
import builtins
import secrets
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Generic, Literal, TypeVar, overload

import msgspec
import uuid6

from ._children import close_ended
from ._clock import Clock
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, check_id, check_name, decode_payload, encode_payload
from ._debounce import check_window, debounce_store, debounced_workflow_id
from ._definitions import Workflow
from ._eager import EagerStarts
from ._errors import (
    ErrorInfo,
    InvalidArgument,
    ScheduleNotFound,
    TenantRequired,
    WorkflowAlreadyExists,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotDeadLettered,
    WorkflowNotFound,
    WorkflowTerminated,
    WorkflowTimeout,
    error_class,
)
from ._group_commit import group_writes
from ._limits import priority_offset
from ._observe import Observer, with_trace_context
from ._registry import WorkflowRegistry
from ._retention import prune_store
from ._schedules import (
    ScheduleInfo,
    ScheduleSpec,
    check_spec,
    decode_spec,
    replanned,
    schedule_store,
    tick_workflow_id,
)
from ._schedules import info as schedule_info
from ._schedules import new_record as new_schedule
from ._sharding import HashSharder, Sharder, key_for
from ._tenancy import DEFAULT_TENANT, current_tenant
from .events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    SignalReceived,
    StepCancelled,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)
from .store import (
    TERMINAL_STATUSES,
    CancelOutcome,
    FlowLimits,
    ListQuery,
    NewWorkflow,
    Outbox,
    PendingStart,
    RunArchive,
    ScheduleRecord,
    ScheduleStore,
    Store,
    TerminateOutcome,
    WorkerInfo,
    WorkflowRecord,
    WorkflowStatus,
)

__all__ = [
    "DebouncedRun",
    "Engine",
    "Planner",
    "Run",
    "RunInfo",
    "WorkflowInfo",
    "WorkflowRegistry",
    "prune_store",
]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741
E = TypeVar("E")
T = TypeVar("T")

WORKER_LIVENESS = timedelta(seconds=60)
_UNCHANGED: Any = object()

IfExists = Literal["error", "return"]
"""What ``Engine.start`` does when the workflow id is taken."""


class WorkflowInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Engine.query`` tells about a workflow."""

    workflow_id: str
    tenant_id: str
    name: str
    version: int
    status: WorkflowStatus
    output: Any = None
    """The decoded JSON output once completed."""
    error: ErrorInfo | None = None
    created_at: datetime
    updated_at: datetime
    history_length: int
    cancel_requested: bool
    waiting_reason: str | None = None
    """Why a running workflow is not progressing (no worker for its version, parked...)."""
    run_number: int = 1
    """The current (latest) run: 1, plus one per ``ctx.continue_as_new``."""
    published: msgspec.Raw | None = None
    """The status the workflow published last (``ctx.set_status``), as JSON; read it
    typed with ``status_value``."""

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def status_value(self, type_: type[T]) -> T | None:
        """The status the workflow published last (``ctx.set_status``) decoded as
        ``type_``; None if it published none. PayloadError if it does not decode."""
        if self.published is None:
            return None
        value: T = decode_payload(
            self.published, type_, what=f"status of workflow {self.workflow_id!r}"
        )
        return value


class RunInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a workflow id (``Engine.runs``): the earlier ones ended by
    ``ctx.continue_as_new`` (status "continued"); the last is the current run."""

    run_number: int
    status: str
    """"continued", or the workflow's status for the current run."""
    input: Any
    """The run's input (decoded JSON)."""
    started_at: datetime
    ended_at: datetime | None
    """None while the current run has not ended."""
    history_length: int


class Run(Generic[O]):
    """A handle on a started workflow."""

    __slots__ = ("engine", "output_type", "tenant_id", "workflow_id", "workflow_name")

    def __init__(
        self, engine: Engine, workflow_id: str, tenant_id: str, workflow_name: str, output_type: Any
    ) -> None:
        self.engine = engine
        self.workflow_id = workflow_id
        self.tenant_id = tenant_id
        self.workflow_name = workflow_name
        self.output_type = output_type

    async def result(self, *, timeout: float | None = None) -> O:
        """Wait for the workflow to finish and return its output (typed)."""
        value: O = await self.engine.wait_for_result(
            self.workflow_id, tenant_id=self.tenant_id, timeout=timeout, type_=self.output_type
        )
        return value

    async def query(self) -> WorkflowInfo:
        return await self.engine.query(self.workflow_id, tenant_id=self.tenant_id)

    def __repr__(self) -> str:
        return f"<Run {self.workflow_name} {self.workflow_id} tenant={self.tenant_id}>"


class DebouncedRun(Run[O]):
    """A handle on the workflow a debounced start (``Engine.start(debounce=...)``) will
    run when its window closes at ``fires_at``: the same id for every start of the
    window. ``starts`` counts the window's starts so far (1: this start opened it).
    ``result()`` waits through the window too."""

    __slots__ = ("debounce_key", "fires_at", "starts")

    def __init__(
        self,
        engine: Engine,
        workflow_id: str,
        tenant_id: str,
        workflow_name: str,
        output_type: Any,
        *,
        debounce_key: str,
        fires_at: datetime,
        starts: int,
    ) -> None:
        super().__init__(engine, workflow_id, tenant_id, workflow_name, output_type)
        self.debounce_key = debounce_key
        self.fires_at = fires_at
        self.starts = starts

    async def result(self, *, timeout: float | None = None) -> O:
        """Wait for the window to fire and the workflow to finish; its output (typed).
        ``timeout``: seconds, counted in real time until the workflow exists (a virtual
        clock may jump past the window), then as ``Engine.wait_for_result`` counts."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            try:
                await self.engine.store.get_workflow(self.tenant_id, self.workflow_id)
                break
            except WorkflowNotFound:
                left = None if deadline is None else deadline - loop.time()
                if left is not None and left <= 0:
                    raise TimeoutError(
                        f"debounced workflow {self.workflow_id!r} not started after {timeout} s"
                    ) from None
                wait = 0.5 if left is None else min(0.5, left)
                await self.engine.store.wait_for_workflow(self.tenant_id, self.workflow_id, wait)
        left = None if deadline is None else max(0.001, deadline - loop.time())
        return await super().result(timeout=left)

    async def pending(self) -> PendingStart | None:
        """The window while it has not fired (its starts, closing time and the input
        that will run); None once its workflow started."""
        store = debounce_store(self.engine.store)
        shard_key = key_for(
            self.engine.planner.sharder, self.workflow_name, self.debounce_key, self.tenant_id
        )
        found = await store.get_pending_start(
            self.tenant_id, self.workflow_name, self.debounce_key, shard_key
        )
        if found is None or found.workflow_id != self.workflow_id:
            return None
        return found

    def __repr__(self) -> str:
        return (
            f"<DebouncedRun {self.workflow_name} {self.workflow_id} tenant={self.tenant_id}"
            f" fires_at={self.fires_at.isoformat()} starts={self.starts}>"
        )


class Planner:
    """The pure half of a client: validate, resolve the tenant, encode, shard. No I/O.

    ``Engine`` drives a store with what it plans; sync clients (flows_pg.SyncClient)
    reuse it so both validate exactly alike.
    """

    def __init__(
        self,
        clock: Clock,
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        sharder: Sharder | None = None,
        require_tenant: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        self.clock = clock
        self.registry = WorkflowRegistry(workflows)
        self.sharder: Sharder = sharder or HashSharder()
        self.require_tenant = require_tenant
        self.max_payload_bytes = max_payload_bytes

    def tenant_for(self, tenant_id: str | None) -> str:
        """Resolve the tenant: argument, then ``flows.tenant()``, then the default."""
        if tenant_id is None:
            tenant_id = current_tenant()
        if tenant_id is None:
            if self.require_tenant:
                raise TenantRequired(
                    "this Engine requires a tenant: pass tenant_id= or use `with flows.tenant(...)`"
                )
            return DEFAULT_TENANT
        return check_id(tenant_id, "tenant id")

    def target(self, workflow_id: str, tenant_id: str | None) -> tuple[str, str]:
        """The tenant and the checked id of the workflow a request names."""
        return self.tenant_for(tenant_id), check_id(workflow_id, "workflow id")

    def start(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        tenant_id: str | None,
        workflow_id: str | None,
        execution_timeout: timedelta | None = None,
    ) -> tuple[NewWorkflow, Workflow[Any, Any]]:
        """Validate and encode a start request."""
        _check_execution_timeout(execution_timeout)
        if isinstance(workflow, str):
            definition = self.registry.latest(check_name(workflow, "workflow name"))
        elif isinstance(workflow, Workflow):
            definition = workflow
        else:
            raise InvalidArgument(f"start() takes a Workflow or a workflow name, got {workflow!r}")
        tenant = self.tenant_for(tenant_id)
        wf_id = str(uuid6.uuid7()) if workflow_id is None else check_id(workflow_id, "workflow id")
        payload = encode_payload(
            input,
            what=f"input of workflow {definition.name!r}",
            expected_type=definition.input_type,
            max_bytes=self.max_payload_bytes,
        )
        started = WorkflowStarted(
            name=definition.name,
            version=definition.version,
            workflow_id=wf_id,
            tenant_id=tenant,
            input=payload,
            seed=secrets.randbits(63),
            at=self.clock.now(),
            execution_timeout=execution_timeout,
        )
        new = NewWorkflow(
            tenant_id=tenant,
            workflow_id=wf_id,
            name=definition.name,
            version=definition.version,
            shard_key=key_for(self.sharder, definition.name, wf_id, tenant),
            input=payload,
            started=started,
        )
        return new, definition

    def debounced(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        tenant_id: str | None,
        debounce: timedelta | None,
        debounce_key: str | None,
        *,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
    ) -> tuple[PendingStart, timedelta, Workflow[Any, Any]]:
        """Validate and encode a debounced start: the start of the key's window (if
        it opens one), its length and the definition."""
        if workflow_id is not None or execution_timeout is not None:
            raise InvalidArgument(
                "a debounced start takes no workflow_id (it is derived from the debounce "
                "key) and no execution_timeout"
            )
        window = check_window(debounce)
        if debounce_key is None:
            raise InvalidArgument("a debounced start needs a debounce_key")
        key = check_id(debounce_key, "debounce key")
        candidate = check_id(debounced_workflow_id(key, self.clock.now()), "debounced workflow id")
        new, definition = self.start(workflow, input, tenant_id, candidate)
        pending = PendingStart(
            tenant_id=new.tenant_id,
            workflow_name=new.name,
            debounce_key=key,
            shard_key=key_for(self.sharder, new.name, key, new.tenant_id),
            workflow_id=new.workflow_id,
            workflow_version=new.version,
            input=new.input,
        )
        return pending, window, definition

    def restart(
        self,
        record: WorkflowRecord,
        workflow_id: str | None,
        execution_timeout: timedelta | None = None,
    ) -> NewWorkflow:
        """A start request for a new workflow with ``record``'s name, version and input
        (``Engine.rerun``), and the original's ``execution_timeout`` (counted anew)."""
        wf_id = str(uuid6.uuid7()) if workflow_id is None else check_id(workflow_id, "workflow id")
        tenant = record.tenant_id
        started = WorkflowStarted(
            name=record.name,
            version=record.version,
            workflow_id=wf_id,
            tenant_id=tenant,
            input=record.input,
            seed=secrets.randbits(63),
            at=self.clock.now(),
            rerun_of=record.workflow_id,
            execution_timeout=execution_timeout,
        )
        return NewWorkflow(
            tenant_id=tenant,
            workflow_id=wf_id,
            name=record.name,
            version=record.version,
            shard_key=key_for(self.sharder, record.name, wf_id, tenant),
            input=record.input,
            started=started,
        )

    def signal(self, name: str, payload: Any) -> SignalReceived:
        """Validate and encode a signal."""
        check_name(name, "signal name")
        raw = encode_payload(
            payload, what=f"payload of signal {name!r}", max_bytes=self.max_payload_bytes
        )
        return SignalReceived(
            name=name, payload=raw, signal_id=str(uuid6.uuid7()), at=self.clock.now()
        )

    def cancel(self, reason: str) -> CancelRequested:
        """Validate a cancel request."""
        return CancelRequested(reason=_reason(reason, "cancel"), at=self.clock.now())

    def terminate(self, reason: str) -> WorkflowTerminatedEvent:
        """Validate a terminate request."""
        return WorkflowTerminatedEvent(reason=_reason(reason, "terminate"), at=self.clock.now())

    def request(
        self, workflow_id: str, tenant_id: str | None, make: Callable[[], E]
    ) -> tuple[str, str, E]:
        """Tenant, workflow id and event (``make()``) of a request about one workflow,
        checked in that order: tenant, event, workflow id (the first bad one is the error)."""
        tenant = self.tenant_for(tenant_id)
        event = make()
        return tenant, check_id(workflow_id, "workflow id"), event

    @staticmethod
    def list_query(
        tenant: str | None,
        status: WorkflowStatus | str | None,
        name: str | None,
        limit: int,
        offset: int,
        *,
        after: tuple[datetime, str] | None = None,
        id_prefix: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> ListQuery:
        """Validate a list request: status, name, limit and offset, the keyset cursor
        ``after`` (a (timezone-aware datetime, workflow id) pair, the ``created_at``
        and ``workflow_id`` of the last row of the previous page), the id prefix and
        the creation time range [created_from, created_to)."""
        status_value: WorkflowStatus | None = None
        if status is not None:
            try:
                status_value = WorkflowStatus(status)
            except ValueError:
                known = ", ".join(s.value for s in WorkflowStatus)
                raise InvalidArgument(f"status {status!r} is not one of: {known}") from None
        if name is not None:
            check_name(name, "workflow name")
        for value, what in ((limit, "limit"), (offset, "offset")):
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
                raise InvalidArgument(f"{what} must be an integer from 0 to 2**31-1, got {value!r}")
        if id_prefix is not None:
            check_name(id_prefix, "id prefix")
        created_from = _aware(created_from, "created_from")
        created_to = _aware(created_to, "created_to")
        if created_from is not None and created_to is not None and created_from > created_to:
            raise InvalidArgument(
                f"created_from ({created_from.isoformat()}) is after created_to "
                f"({created_to.isoformat()})"
            )
        return ListQuery(
            tenant_id=tenant,
            status=status_value,
            name=name,
            limit=limit,
            offset=offset,
            after=_cursor(after),
            id_prefix=id_prefix,
            created_from=created_from,
            created_to=created_to,
        )


def _aware(value: object, what: str) -> datetime | None:
    """``value`` if it is None or a timezone-aware datetime, else InvalidArgument."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise InvalidArgument(f"{what} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument(f"{what} {value.isoformat()} has no timezone (use an aware datetime)")
    return value


def _cursor(after: object) -> tuple[datetime, str] | None:
    """A listing's keyset cursor: None or (aware datetime, workflow id)."""
    if after is None:
        return None
    if not isinstance(after, tuple | list) or len(after) != 2:
        raise InvalidArgument(
            "after must be a (created_at, workflow_id) pair, the last row of the previous "
            f"page; got {after!r}"
        )
    at = _aware(after[0], "after's created_at")
    if at is None:
        raise InvalidArgument("after's created_at must be a datetime, got None")
    return (at, check_id(after[1], "after's workflow id"))


class Engine:
    """Client of a Store: the API applications use to drive workflows.

    ``eager``: an ``EagerStarts`` shared with the Workers of this process; a workflow
    started here then goes, already leased, straight to one of them that serves it and
    has room (eager start, on stores that can). None (the default): through the queue.
    ``observer``: told of the starts (it gives the trace context stored with each) and
    of the workflows this client ends (see flows_observe); the default does nothing.
    """

    def __init__(
        self,
        store: Store,
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        sharder: Sharder | None = None,
        require_tenant: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        eager: EagerStarts | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.store = store
        self.observer = observer if observer is not None else Observer()
        if not isinstance(self.observer, Observer):
            raise InvalidArgument(f"Engine observer must be a flows.Observer, got {observer!r}")
        """Told of starts (with the trace context to store) and of the workflows this
        client ends (terminate, cancel of a dead letter); see flows_observe."""
        self.eager = eager
        """Shared with the Workers of this process: start workflows leased to one that
        serves them and has room, when the store can (eager start; None: never)."""
        self.planner = Planner(
            store.clock,
            workflows=workflows,
            # A store may impose its own placement (Citus: keys follow from tenant and id).
            sharder=sharder if sharder is not None else getattr(store, "sharder", None),
            require_tenant=require_tenant,
            max_payload_bytes=max_payload_bytes,
        )
        self.registry = self.planner.registry
        self.tenant_for = self.planner.tenant_for

    @overload
    async def start(
        self,
        workflow: Workflow[I, O],
        input: I,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
        if_exists: IfExists = "error",
        priority: int = 0,
        debounce: None = None,
        debounce_key: None = None,
    ) -> Run[O]: ...
    @overload
    async def start(
        self,
        workflow: Workflow[I, O],
        input: I,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
        debounce: timedelta,
        debounce_key: str,
    ) -> DebouncedRun[O]: ...
    @overload
    async def start(
        self,
        workflow: str,
        input: Any,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
        if_exists: IfExists = "error",
        priority: int = 0,
        debounce: None = None,
        debounce_key: None = None,
    ) -> Run[Any]: ...
    @overload
    async def start(
        self,
        workflow: str,
        input: Any,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
        debounce: timedelta,
        debounce_key: str,
    ) -> DebouncedRun[Any]: ...
    async def start(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
        if_exists: IfExists = "error",
        priority: int = 0,
        debounce: timedelta | None = None,
        debounce_key: str | None = None,
    ) -> Run[Any]:
        """Start a workflow; returns at once with a ``Run`` handle.

        ``workflow`` is a definition, or a registered name (its highest version).
        ``execution_timeout``: once this long has passed since the start, the workflow
        is ended FAILED with error type ``WorkflowTimeout`` (``wait_for_result`` raises
        ``flows.WorkflowTimeout``), even if it waits for a signal; no more of its code
        runs and its pending steps are dropped.
        ``tx`` is the caller's open transaction where the store supports one (the
        observer counts the start when this call returns, even if the caller then rolls
        the transaction back).
        ``debounce``/``debounce_key``: a debounced start (see flows_core._debounce): of
        the starts of this workflow with this key (per tenant) within ``debounce`` from
        the first of them, only the last runs, with its input, when the window closes.
        Returns a ``DebouncedRun`` on that future workflow (its id is
        ``f"{debounce_key}@{window opening time}"``); not with ``workflow_id`` or
        ``execution_timeout``.
        ``if_exists``: when ``workflow_id`` is taken, ``"error"`` (the default) raises
        WorkflowAlreadyExists; ``"return"`` returns the handle of the workflow already
        there (whatever its status), so a retried request starts it once. A workflow of
        another name under that id is an error either way.
        ``priority`` (0 to 1000, higher first): its first workflow task is claimed before
        the tasks that have waited less than ``priority`` seconds (flows_core._limits).
        """
        if if_exists not in ("error", "return"):
            raise InvalidArgument(f"if_exists must be 'error' or 'return', got {if_exists!r}")
        if debounce is not None or debounce_key is not None:
            if priority:
                raise InvalidArgument("a debounced start takes no priority")
            pending, window, definition = self.planner.debounced(
                workflow,
                input,
                tenant_id,
                debounce,
                debounce_key,
                workflow_id=workflow_id,
                execution_timeout=execution_timeout,
            )
            stored = await debounce_store(self.store).debounce_start(pending, window=window, tx=tx)
            assert stored.fires_at is not None
            return DebouncedRun(
                self,
                stored.workflow_id,
                stored.tenant_id,
                stored.workflow_name,
                definition.output_type,
                debounce_key=stored.debounce_key,
                fires_at=stored.fires_at,
                starts=stored.starts,
            )
        ahead = priority_offset(priority)
        new, definition = self.planner.start(
            workflow, input, tenant_id, workflow_id, execution_timeout
        )
        if ahead:
            if not isinstance(self.store, FlowLimits):
                raise InvalidArgument(f"{type(self.store).__name__} does not support priorities")
            new = msgspec.structs.replace(new, claim_ahead=ahead)
        if if_exists == "error":
            return await self._start(new, definition, tx)
        try:
            return await self._start(new, definition, tx)
        except WorkflowAlreadyExists:
            record = await self.store.get_workflow(new.tenant_id, new.workflow_id, tx=tx)
            if record.name != new.name:
                raise taken_by_another(new.workflow_id, record.name, new.name) from None
            return Run(self, new.workflow_id, new.tenant_id, new.name, definition.output_type)

    async def _start(self, new: NewWorkflow, definition: Workflow[Any, Any], tx: Any) -> Run[Any]:
        observer = self.observer
        if type(observer) is Observer:  # the no-op: no context manager per start
            if tx is not None or not await self._start_eagerly(new):
                await self._start_plain(new, tx)
            return Run(self, new.workflow_id, new.tenant_id, new.name, definition.output_type)
        with observer.workflow_start(new.name, new.tenant_id, new.workflow_id) as context:
            # stamped before the eager path, which writes ``new.started`` too
            new = with_trace_context(new, context)
            if tx is not None or not await self._start_eagerly(new):
                await self._start_plain(new, tx)
        observer.workflow_started(new.name, new.tenant_id)
        return Run(self, new.workflow_id, new.tenant_id, new.name, definition.output_type)

    async def _start_plain(self, new: NewWorkflow, tx: Any) -> None:
        """Through the queue; without ``tx``, grouped with the starts in flight from this
        process (flows_core._group_commit)."""
        if tx is not None:
            await self.store.start_workflow(new, tx=tx)
        else:
            await group_writes(self.store).start_workflow(new)

    async def _start_eagerly(self, new: NewWorkflow) -> bool:
        """Eager workflow start through the ``EagerStarts`` shared with the Workers of
        this process (``eager=``); False when it is not possible (the caller then
        starts it the ordinary way). See flows_core._eager."""
        if self.eager is None:
            return False
        return await self.eager.start(self.store, new)

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
        idempotency_key: str | None = None,
    ) -> bool:
        """Send signal ``name`` with ``payload`` to a running workflow. True if it was
        delivered now.

        ``idempotency_key``: the signal is delivered once per (tenant, workflow, key),
        however often it is sent (a retried HTTP handler): a repeat does nothing and
        returns False, even once the workflow has finished. Keys are kept with the
        workflow and deleted with it (``prune``, retention)."""
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.signal(name, payload)
        )
        if idempotency_key is None:
            await self.store.signal_workflow(tenant, wf_id, event, tx=tx)
            return True
        key = check_name(idempotency_key, "idempotency key")
        if not isinstance(self.store, Outbox):
            raise InvalidArgument(
                f"{type(self.store).__name__} cannot deliver once (no deliver_once): "
                "signal without idempotency_key"
            )
        return await self.store.deliver_once(tenant, wf_id, event, f"signal:{key}", tx=tx)

    async def cancel(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> CancelOutcome:
        """Ask a workflow to cancel. Says ALREADY_FINISHED (and does nothing) if it ended."""
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.cancel(reason)
        )
        outcome = await self.store.cancel_workflow(tenant, wf_id, event, tx=tx)
        if outcome == CancelOutcome.CANCELLED:  # a dead letter, ended at once
            await self._ended(tenant, wf_id, WorkflowStatus.CANCELLED, tx)
            if tx is None:
                await close_ended(self.store, tenant, wf_id)
        return outcome

    async def terminate(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> TerminateOutcome:
        """End a running or dead-lettered workflow at once: no more of its code runs (no
        compensation), its pending steps, timers and signals are dropped, waiters get
        ``WorkflowTerminated``. Says ALREADY_FINISHED (and does nothing) if it ended."""
        tenant, wf_id, event = self.planner.request(
            workflow_id, tenant_id, lambda: self.planner.terminate(reason)
        )
        outcome = await self.store.terminate_workflow(tenant, wf_id, event, tx=tx)
        if outcome == TerminateOutcome.TERMINATED:
            await self._ended(tenant, wf_id, WorkflowStatus.TERMINATED, tx)
        if tx is None:  # again on a repeated terminate: it may finish what a crash cut
            await close_ended(self.store, tenant, wf_id)
        return outcome

    async def _ended(self, tenant: str, workflow_id: str, status: WorkflowStatus, tx: Any) -> None:
        """Tell the observer this client ended a workflow (its name takes one read)."""
        if type(self.observer) is Observer:
            return
        record = await self.store.get_workflow(tenant, workflow_id, tx=tx)
        self.observer.workflow_finished(record.name, tenant, status)

    async def query(
        self, workflow_id: str, *, tenant_id: str | None = None, tx: Any = None
    ) -> WorkflowInfo:
        """Status, output or error, and why it waits if it does."""
        tenant = self.tenant_for(tenant_id)
        record = await self.store.get_workflow(tenant, check_id(workflow_id, "workflow id"), tx=tx)
        reason = await self._waiting_reason(record)
        return self.info(record, waiting_reason=reason)

    async def history(
        self, workflow_id: str, *, tenant_id: str | None = None, run_number: int | None = None
    ) -> list[Event]:
        """The workflow's events, oldest first (position = index + 1): those of its
        current run, or of run ``run_number`` (an earlier run, ended by
        ``ctx.continue_as_new``: see ``runs``). InvalidArgument for a run it never had."""
        tenant, wf_id = self.planner.target(workflow_id, tenant_id)
        if run_number is None:
            return await self.store.get_history(tenant, wf_id)
        if isinstance(run_number, bool) or not isinstance(run_number, int) or run_number < 1:
            raise InvalidArgument(f"run_number must be an integer >= 1, got {run_number!r}")
        record = await self.store.get_workflow(tenant, wf_id)
        if run_number == record.run_number:
            return await self.store.get_history(tenant, wf_id)
        archive = _archive(self.store)
        events = [] if archive is None else await archive.get_run_history(tenant, wf_id, run_number)
        if not events:
            raise InvalidArgument(
                f"workflow {wf_id!r} has no run {run_number} (its runs are 1 to "
                f"{record.run_number})"
            )
        return events

    async def runs(
        self, workflow_id: str, *, tenant_id: str | None = None
    ) -> builtins.list[RunInfo]:
        """The runs of a workflow id, oldest first: the earlier ones (ended by
        ``ctx.continue_as_new``, status "continued") and the current one, last."""
        tenant, wf_id = self.planner.target(workflow_id, tenant_id)
        record = await self.store.get_workflow(tenant, wf_id)
        archive = _archive(self.store)
        earlier = [] if archive is None else await archive.list_runs(tenant, wf_id)
        runs = [
            RunInfo(
                run_number=r.run_number,
                status=r.status,
                input=msgspec.json.decode(r.input),
                started_at=r.started_at,
                ended_at=r.ended_at,
                history_length=r.history_length,
            )
            for r in earlier
            if r.run_number < record.run_number
        ]
        started_at = runs[-1].ended_at if runs else record.created_at
        finished = record.status in TERMINAL_STATUSES
        runs.append(
            RunInfo(
                run_number=record.run_number,
                status=record.status.value,
                input=msgspec.json.decode(record.input),
                started_at=started_at or record.created_at,
                ended_at=record.updated_at if finished else None,
                history_length=record.history_length,
            )
        )
        return runs

    async def list(
        self,
        *,
        tenant_id: str | None = None,
        status: WorkflowStatus | str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
        after: tuple[datetime, str] | None = None,
        id_prefix: str | None = None,
        created_from: datetime | None = None,
        created_to: datetime | None = None,
    ) -> list[WorkflowInfo]:
        """This tenant's workflows, newest first (by ``created_at``, then workflow id).

        Filters combine: ``status``, ``name``, ``id_prefix`` (ids starting with it) and
        the creation time range [``created_from``, ``created_to``). Paging: pass the
        ``(created_at, workflow_id)`` of the last row of a page as ``after`` to get the
        next one (keyset paging: exact while workflows start meanwhile, and as fast
        deep down as on page one); ``offset`` skips rows."""
        tenant = self.tenant_for(tenant_id)
        query = self.planner.list_query(
            tenant,
            status,
            name,
            limit,
            offset,
            after=after,
            id_prefix=id_prefix,
            created_from=created_from,
            created_to=created_to,
        )
        records = await self.store.list_workflows(query)
        return [self.info(r) for r in records]

    async def wait_for_result(
        self,
        workflow_id: str,
        *,
        tenant_id: str | None = None,
        timeout: float | None = None,
        type_: Any = Any,
    ) -> Any:
        """Wait until the workflow finishes; return its output decoded as ``type_``.

        Raises WorkflowFailed or WorkflowCancelled, and TimeoutError after ``timeout``
        seconds (of the store's clock).
        """
        tenant, wf_id = self.planner.target(workflow_id, tenant_id)
        clock = self.store.clock
        deadline = None if timeout is None else clock.now() + timedelta(seconds=timeout)
        while True:
            record = await self.store.get_workflow(tenant, wf_id)
            if record.status in TERMINAL_STATUSES:
                return self._outcome(record, type_)
            wait = 1.0
            if deadline is not None:
                left = (deadline - clock.now()).total_seconds()
                if left <= 0:
                    raise TimeoutError(
                        f"workflow {wf_id!r} still {record.status} after {timeout} s"
                    )
                wait = min(wait, left)
            await self.store.wait_for_workflow(tenant, wf_id, wait)

    @staticmethod
    def _outcome(record: WorkflowRecord, type_: Any) -> Any:
        if record.status == WorkflowStatus.COMPLETED:
            assert record.output is not None
            return decode_payload(record.output, type_, what=f"output of {record.workflow_id!r}")
        if record.status == WorkflowStatus.CANCELLED:
            raise WorkflowCancelled(record.workflow_id)
        if record.status == WorkflowStatus.TERMINATED:
            reason = record.error.message if record.error is not None else ""
            raise WorkflowTerminated(record.workflow_id, reason)
        error = record.error or ErrorInfo(type="Unknown", message="")
        if error_class(error) is WorkflowTimeout:
            raise WorkflowTimeout(record.workflow_id, error)
        raise WorkflowFailed(record.workflow_id, error)

    @staticmethod
    def info(record: WorkflowRecord, *, waiting_reason: str | None = None) -> WorkflowInfo:
        output = None
        if record.output is not None:
            output = msgspec.json.decode(record.output)
        return WorkflowInfo(
            workflow_id=record.workflow_id,
            tenant_id=record.tenant_id,
            name=record.name,
            version=record.version,
            status=record.status,
            output=output,
            error=record.error,
            created_at=record.created_at,
            updated_at=record.updated_at,
            history_length=record.history_length,
            cancel_requested=record.cancel_requested,
            waiting_reason=waiting_reason,
            run_number=record.run_number,
            published=record.status_value,
        )

    # -- operations --

    async def prune(
        self, older_than: timedelta, *, batch: int = 1000, max_batches: int | None = None
    ) -> int:
        """Delete finished workflows (completed, failed, cancelled) not updated for
        ``older_than``, with their history, inbox and tasks, in transactions of at most
        ``batch`` workflows, until none is left (or after ``max_batches``). Every tenant's.
        Returns how many were deleted."""
        return await prune_store(self.store, older_than, batch=batch, max_batches=max_batches)

    # -- dead letters (a PARKED workflow is a dead letter) --

    async def dead_letters(
        self,
        *,
        tenant_id: str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> builtins.list[WorkflowInfo]:
        """This tenant's dead-lettered (PARKED) workflows, newest first; ``error`` says
        why and ``error.attempts`` after how many workflow-task attempts."""
        return await self.list(
            tenant_id=tenant_id, status=WorkflowStatus.PARKED, name=name, limit=limit, offset=offset
        )

    async def retry(self, workflow_id: str, *, tenant_id: str | None = None) -> None:
        """Put a dead-lettered workflow back to running, in place, after a code fix: its
        workflow task is claimable again (attempt count reset), history untouched.
        WorkflowNotDeadLettered if it is not dead-lettered."""
        tenant, wf_id = self.planner.target(workflow_id, tenant_id)
        if not await self.store.retry_workflow(tenant, wf_id):
            record = await self.store.get_workflow(tenant, wf_id)
            raise WorkflowNotDeadLettered(wf_id, record.status.value)

    async def rerun(
        self,
        workflow_id: str,
        *,
        tenant_id: str | None = None,
        new_workflow_id: str | None = None,
    ) -> Run[Any]:
        """Start a NEW workflow with the same name, version and input as
        ``workflow_id`` (typically a dead letter; any status works). The original is
        left as it is. The new WorkflowStarted records ``rerun_of``; the original's
        ``execution_timeout``, if any, applies again from the new start."""
        tenant = self.tenant_for(tenant_id)
        record = await self.store.get_workflow(tenant, check_id(workflow_id, "workflow id"))
        first = await self.store.get_history(tenant, record.workflow_id)
        timeout = None
        if first and isinstance(first[0], WorkflowStarted):
            timeout = first[0].execution_timeout
        new = self.planner.restart(record, new_workflow_id, timeout)
        # a new start: a new trace under whatever span is current
        with self.observer.workflow_start(new.name, new.tenant_id, new.workflow_id) as context:
            new = with_trace_context(new, context)
            await self.store.start_workflow(new)
        self.observer.workflow_started(new.name, new.tenant_id)
        definition = self.registry.get(record.name, record.version)
        output_type = Any if definition is None else definition.output_type
        return Run(self, new.workflow_id, new.tenant_id, new.name, output_type)

    async def _waiting_reason(self, record: WorkflowRecord) -> str | None:
        if record.status == WorkflowStatus.PARKED:
            attempts = record.error.attempts if record.error is not None else 0
            return (
                f"dead-lettered (parked) after {attempts} attempt(s): {record.error}; "
                "fix the code, then retry it in place (engine.retry / `flows retry`) "
                "or rerun it as a new workflow (engine.rerun / `flows rerun`)"
            )
        if record.status != WorkflowStatus.RUNNING:
            return None
        if isinstance(self.store, FlowLimits):  # a slot, a rate token (flows_core._limits)
            deferred = await self.store.waiting_reason(record.tenant_id, record.workflow_id)
            if deferred is not None:
                return deferred
        horizon = self.store.clock.now() - WORKER_LIVENESS
        workers = [w for w in await self.store.list_workers() if w.heartbeat_at >= horizon]
        if not record.workflow_task_pending:
            return await self._unserved_activity(record, workers)
        wanted = (record.name, record.version)
        if any(tuple(t) == wanted for w in workers for t in w.workflow_types):
            return None
        others = sorted({v for w in workers for (n, v) in w.workflow_types if n == record.name})
        seen = f"; live workers run versions {others}" if others else ""
        return f"waiting for a worker that runs {record.name!r} version {record.version}{seen}"

    async def _unserved_activity(
        self, record: WorkflowRecord, workers: builtins.list[WorkerInfo]
    ) -> str | None:
        """Why a workflow waiting for its steps does not progress: an activity it waits
        for that no live worker serves (read from the history: scheduled, unresolved)."""
        history = await self.store.get_history(record.tenant_id, record.workflow_id)
        served = {name for w in workers for name in w.activity_names}
        missing = {
            seq: name for seq, name in pending_activities(history).items() if name not in served
        }
        if not missing:
            return None
        seq = min(missing)
        more = len(missing) - 1
        others = f" (and {more} more step(s) no live worker serves)" if more else ""
        return (
            f"waiting for a worker that runs activity {missing[seq]!r} (step #{seq}); "
            f"no live worker serves it{others}"
        )

    # -- schedules (flows_core._schedules) --

    async def schedule(
        self,
        schedule_id: str,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        spec: ScheduleSpec,
        tenant_id: str | None = None,
        paused: bool = False,
    ) -> ScheduleInfo:
        """Create the schedule ``schedule_id`` or update it (workflow, input, spec):
        every tick of ``spec`` starts ``workflow`` with ``input`` as the workflow
        ``f"{schedule_id}@{tick:%Y-%m-%dT%H:%M:%SZ}"``, once. The Workers fire the
        ticks. Calling it again with the same arguments changes nothing (an
        application may call it at every start); a changed spec counts its ticks anew
        from now. ``paused`` applies to a new schedule only (see ``pause_schedule``)."""
        store = schedule_store(self.store)
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        check_id(tick_workflow_id(sid, self.store.clock.now()), "workflow id of a tick")
        spec = check_spec(spec)
        definition = self._scheduled(workflow)
        payload = encode_payload(
            input,
            what=f"input of workflow {definition.name!r}",
            expected_type=definition.input_type,
            max_bytes=self.planner.max_payload_bytes,
        )
        while True:
            try:
                found = await store.get_schedule(tenant, sid)
            except ScheduleNotFound:
                row = new_schedule(
                    tenant_id=tenant,
                    schedule_id=sid,
                    shard_key=key_for(self.planner.sharder, definition.name, sid, tenant),
                    workflow_name=definition.name,
                    workflow_version=definition.version,
                    input=payload,
                    spec=spec,
                    paused=paused,
                    now=self.store.clock.now(),
                )
                if await store.put_schedule(row, expected_revision=None):
                    return schedule_info(await store.get_schedule(tenant, sid))
                continue
            same = (
                found.workflow_name == definition.name
                and found.workflow_version == definition.version
                and msgspec.json.decode(found.input) == msgspec.json.decode(payload)
            )
            if same and decode_spec(found.spec) == spec:
                return schedule_info(found)
            changes: dict[str, Any] = {
                "workflow_name": definition.name,
                "workflow_version": definition.version,
                "input": payload,
            }
            if decode_spec(found.spec) == spec:  # same ticks
                row = msgspec.structs.replace(found, **changes)
                done = await store.put_schedule(row, expected_revision=found.revision)
            else:
                done = await self._replan(store, found, spec, **changes)
            if done:
                return schedule_info(await store.get_schedule(tenant, sid))

    async def update_schedule(
        self,
        schedule_id: str,
        *,
        spec: ScheduleSpec | None = None,
        workflow: Workflow[Any, Any] | str | None = None,
        input: Any = _UNCHANGED,
        tenant_id: str | None = None,
    ) -> ScheduleInfo:
        """Change some of a schedule's spec, workflow and input (the others stay; a new
        spec counts its ticks anew from now); ScheduleNotFound if there is none."""
        store = schedule_store(self.store)
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        if spec is not None:
            check_spec(spec)
        chosen = None if workflow is None else self._scheduled(workflow)
        while True:
            found = await store.get_schedule(tenant, sid)
            changes: dict[str, Any] = {}
            definition = chosen
            if chosen is not None:
                changes.update(workflow_name=chosen.name, workflow_version=chosen.version)
            else:
                definition = self.registry.get(found.workflow_name, found.workflow_version)
            if input is not _UNCHANGED:
                changes["input"] = encode_payload(
                    input,
                    what=f"input of workflow {changes.get('workflow_name', found.workflow_name)!r}",
                    expected_type=Any if definition is None else definition.input_type,
                    max_bytes=self.planner.max_payload_bytes,
                )
            if spec is not None and spec != decode_spec(found.spec):
                done = await self._replan(store, found, spec, **changes)
            else:
                row = msgspec.structs.replace(found, **changes)
                done = await store.put_schedule(row, expected_revision=found.revision)
            if done:
                return schedule_info(await store.get_schedule(tenant, sid))

    async def get_schedule(self, schedule_id: str, *, tenant_id: str | None = None) -> ScheduleInfo:
        """A schedule: its spec, whether it is paused, its next fire times, its last tick
        and workflow. ScheduleNotFound if there is none."""
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        return schedule_info(await schedule_store(self.store).get_schedule(tenant, sid))

    async def list_schedules(
        self,
        *,
        tenant_id: str | None = None,
        limit: int = 100,
        after: str | None = None,
    ) -> builtins.list[ScheduleInfo]:
        """This tenant's schedules ordered by id, after the id ``after``."""
        tenant = self.tenant_for(tenant_id)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit < 2**31:
            raise InvalidArgument(f"limit must be an integer from 0 to 2**31-1, got {limit!r}")
        cursor = None if after is None else (check_id(after, "after"), tenant)
        rows = await schedule_store(self.store).list_schedules(tenant, after=cursor, limit=limit)
        return [schedule_info(row) for row in rows]

    async def pause_schedule(
        self, schedule_id: str, *, tenant_id: str | None = None
    ) -> ScheduleInfo:
        """Stop firing ticks until ``resume_schedule`` (ticks meanwhile are skipped)."""
        return await self._set_paused(schedule_id, tenant_id, paused=True)

    async def resume_schedule(
        self, schedule_id: str, *, tenant_id: str | None = None
    ) -> ScheduleInfo:
        """Fire ticks again, from the first one after now."""
        return await self._set_paused(schedule_id, tenant_id, paused=False)

    async def trigger_schedule(self, schedule_id: str, *, tenant_id: str | None = None) -> str:
        """Fire the schedule now, once, under its overlap policy (a Worker fires it at
        its next poll, paused or not); returns the id its workflow gets
        (``f"{schedule_id}@{now:%Y-%m-%dT%H:%M:%SZ}"``: two triggers within one second
        are one)."""
        store = schedule_store(self.store)
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        while True:
            found = await store.get_schedule(tenant, sid)
            now = self.store.clock.now().replace(microsecond=0)
            due = now if found.due_at is None else min(found.due_at, now)
            row = msgspec.structs.replace(found, trigger_at=now, due_at=due)
            if await store.put_schedule(row, expected_revision=found.revision):
                return tick_workflow_id(sid, now)

    async def delete_schedule(self, schedule_id: str, *, tenant_id: str | None = None) -> None:
        """Delete a schedule (workflows it started go on); ScheduleNotFound if none."""
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        if not await schedule_store(self.store).delete_schedule(tenant, sid):
            raise ScheduleNotFound(sid, tenant)

    def _schedule_target(self, schedule_id: str, tenant_id: str | None) -> tuple[str, str]:
        return self.tenant_for(tenant_id), check_id(schedule_id, "schedule id")

    def _scheduled(self, workflow: Workflow[Any, Any] | str) -> Workflow[Any, Any]:
        if isinstance(workflow, str):
            return self.registry.latest(check_name(workflow, "workflow name"))
        if isinstance(workflow, Workflow):
            return workflow
        raise InvalidArgument(f"schedule() takes a Workflow or a workflow name, got {workflow!r}")

    async def _replan(
        self, store: ScheduleStore, found: ScheduleRecord, spec: ScheduleSpec, **changes: Any
    ) -> bool:
        row = replanned(found, spec, self.store.clock.now(), **changes)
        return await store.put_schedule(row, expected_revision=found.revision)

    async def _set_paused(
        self, schedule_id: str, tenant_id: str | None, *, paused: bool
    ) -> ScheduleInfo:
        store = schedule_store(self.store)
        tenant, sid = self._schedule_target(schedule_id, tenant_id)
        while True:
            found = await store.get_schedule(tenant, sid)
            if found.paused == paused and found.next_tick_at is not None:
                return schedule_info(found)
            if paused:
                row = msgspec.structs.replace(found, paused=True)
                done = await store.put_schedule(row, expected_revision=found.revision)
            else:
                done = await self._replan(store, found, decode_spec(found.spec), paused=False)
            if done:
                return schedule_info(await store.get_schedule(tenant, sid))


def _archive(store: Store) -> RunArchive | None:
    """The store's archive of earlier runs (``flows_core.store.RunArchive``), if it has one."""
    return store if isinstance(store, RunArchive) else None


def pending_activities(history: builtins.list[Event]) -> dict[int, str]:
    """Activity steps scheduled in ``history`` and not resolved nor cancelled: seq -> name."""
    pending: dict[int, str] = {}
    for event in history:
        if isinstance(event, ActivityScheduled):
            pending[event.seq] = event.name
        elif isinstance(event, ActivityCompleted | ActivityFailedEvent | StepCancelled):
            pending.pop(event.seq, None)
    return pending


def taken_by_another(workflow_id: str, existing: str, wanted: str) -> WorkflowAlreadyExists:
    """The error of ``start(..., if_exists="return")`` when the id is another workflow's."""
    error = WorkflowAlreadyExists(workflow_id)
    error.args = (
        f"workflow {workflow_id!r} already exists as a {existing!r} workflow, not {wanted!r} "
        "(if_exists='return' returns only a workflow of the same name)",
    )
    return error


def _reason(reason: str, what: str) -> str:
    text = str(reason)[:1000]
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} reason is not valid Unicode text: {exc}") from None
    return text


def _check_execution_timeout(value: object) -> None:
    if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
        raise InvalidArgument(f"execution_timeout must be a positive timedelta, got {value!r}")
