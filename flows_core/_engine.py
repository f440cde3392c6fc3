"""The client: start, signal, cancel, query and wait for workflows."""

from __future__ import annotations

import builtins
import secrets
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, overload

import msgspec
import uuid6

from ._clock import Clock
from ._codec import DEFAULT_MAX_PAYLOAD_BYTES, check_id, check_name, decode_payload, encode_payload
from ._definitions import Workflow
from ._errors import (
    ErrorInfo,
    InvalidArgument,
    TenantRequired,
    WorkflowCancelled,
    WorkflowFailed,
    WorkflowNotDeadLettered,
    WorkflowNotRegistered,
    WorkflowTerminated,
    WorkflowTimeout,
    error_class,
)
from ._sharding import HashSharder, Sharder, key_for
from ._tenancy import DEFAULT_TENANT, current_tenant
from .events import (
    CancelRequested,
    Event,
    SignalReceived,
    WorkflowStarted,
    WorkflowTerminatedEvent,
)
from .store import (
    TERMINAL_STATUSES,
    CancelOutcome,
    ListQuery,
    NewWorkflow,
    Store,
    TerminateOutcome,
    WorkflowRecord,
    WorkflowStatus,
    WorkflowTaskClaim,
)

__all__ = ["Engine", "Planner", "Run", "WorkflowInfo", "WorkflowRegistry", "prune_store"]

I = TypeVar("I")  # noqa: E741
O = TypeVar("O")  # noqa: E741

WORKER_LIVENESS = timedelta(seconds=60)


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

    @property
    def finished(self) -> bool:
        return self.status in TERMINAL_STATUSES


class WorkflowRegistry:
    """Workflow definitions by (name, version); new starts use the highest version."""

    def __init__(self, workflows: Iterable[Workflow[Any, Any]] = ()) -> None:
        self._by_key: dict[tuple[str, int], Workflow[Any, Any]] = {}
        for wf in workflows:
            self.add(wf)

    def add(self, wf: Workflow[Any, Any]) -> None:
        if not isinstance(wf, Workflow):
            raise InvalidArgument(f"expected a Workflow made with @flows.workflow, got {wf!r}")
        key = (wf.name, wf.version)
        existing = self._by_key.get(key)
        if existing is not None and existing is not wf:
            raise InvalidArgument(f"workflow {wf.name!r} version {wf.version} is registered twice")
        self._by_key[key] = wf

    def get(self, name: str, version: int) -> Workflow[Any, Any] | None:
        return self._by_key.get((name, version))

    def latest(self, name: str) -> Workflow[Any, Any]:
        versions = [wf for (n, _), wf in self._by_key.items() if n == name]
        if not versions:
            known = sorted({n for n, _ in self._by_key}) or ["none"]
            raise WorkflowNotRegistered(
                f"workflow {name!r} is not registered (registered: {', '.join(known)})"
            )
        return max(versions, key=lambda wf: wf.version)

    def keys(self) -> list[tuple[str, int]]:
        return sorted(self._by_key)

    def names(self) -> set[str]:
        return {name for name, _ in self._by_key}

    def __iter__(self) -> Any:
        return iter(self._by_key.values())


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

    @staticmethod
    def list_query(
        tenant: str | None,
        status: WorkflowStatus | str | None,
        name: str | None,
        limit: int,
        offset: int,
    ) -> ListQuery:
        """Validate a list request (status, name, limit and offset)."""
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
        return ListQuery(
            tenant_id=tenant, status=status_value, name=name, limit=limit, offset=offset
        )


class Engine:
    """Client of a Store: the API applications use to drive workflows."""

    def __init__(
        self,
        store: Store,
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        sharder: Sharder | None = None,
        require_tenant: bool = False,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        eager_start: bool = True,
    ) -> None:
        self.store = store
        self.eager_start = eager_start
        """Start workflows leased to a Worker of this process that serves them and has
        free capacity, when the store can (see ``_start_eagerly``)."""
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
    ) -> Run[O]: ...
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
    ) -> Run[Any]: ...
    async def start(
        self,
        workflow: Workflow[Any, Any] | str,
        input: Any,
        *,
        tenant_id: str | None = None,
        workflow_id: str | None = None,
        execution_timeout: timedelta | None = None,
        tx: Any = None,
    ) -> Run[Any]:
        """Start a workflow; returns at once with a ``Run`` handle.

        ``workflow`` is a definition, or a registered name (its highest version).
        ``execution_timeout``: once this long has passed since the start, the workflow
        is ended FAILED with error type ``WorkflowTimeout`` (``wait_for_result`` raises
        ``flows.WorkflowTimeout``), even if it waits for a signal; no more of its code
        runs and its pending steps are dropped.
        ``tx`` is the caller's open transaction where the store supports one.
        """
        new, definition = self.planner.start(
            workflow, input, tenant_id, workflow_id, execution_timeout
        )
        if tx is not None or not await self._start_eagerly(new):
            await self.store.start_workflow(new, tx=tx)
        return Run(self, new.workflow_id, new.tenant_id, new.name, definition.output_type)

    async def _start_eagerly(self, new: NewWorkflow) -> bool:
        """Eager workflow start: when a Worker running in this process on the same store
        serves the workflow and has a free slot, and the store offers
        ``start_workflow_leased`` (an optional capability, ``flows_core.store.EagerStart``),
        start the workflow with its first workflow task leased to that worker and hand
        the claim over in-process (no claim transaction, no notification). False when
        that is not possible (the caller then starts it the ordinary way)."""
        if not self.eager_start:
            return False
        start_leased = getattr(self.store, "start_workflow_leased", None)
        if start_leased is None:
            return False
        for worker in local_workers(self.store):
            if worker.reserve_slot(new):
                break
        else:
            return False
        try:
            claim = await start_leased(new, owner=worker.worker_id, lease=worker.lease)
        except BaseException:
            worker.unreserve_slot()
            raise
        await worker.accept_eager(claim)
        return True

    async def signal(
        self,
        workflow_id: str,
        name: str,
        payload: Any = None,
        *,
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> None:
        """Send signal ``name`` with ``payload`` to a running workflow."""
        tenant = self.tenant_for(tenant_id)
        event = self.planner.signal(name, payload)
        await self.store.signal_workflow(tenant, check_id(workflow_id, "workflow id"), event, tx=tx)

    async def cancel(
        self,
        workflow_id: str,
        *,
        reason: str = "",
        tenant_id: str | None = None,
        tx: Any = None,
    ) -> CancelOutcome:
        """Ask a workflow to cancel. Says ALREADY_FINISHED (and does nothing) if it ended."""
        tenant = self.tenant_for(tenant_id)
        event = self.planner.cancel(reason)
        return await self.store.cancel_workflow(
            tenant, check_id(workflow_id, "workflow id"), event, tx=tx
        )

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
        tenant = self.tenant_for(tenant_id)
        event = self.planner.terminate(reason)
        return await self.store.terminate_workflow(
            tenant, check_id(workflow_id, "workflow id"), event, tx=tx
        )

    async def query(
        self, workflow_id: str, *, tenant_id: str | None = None, tx: Any = None
    ) -> WorkflowInfo:
        """Status, output or error, and why it waits if it does."""
        tenant = self.tenant_for(tenant_id)
        record = await self.store.get_workflow(tenant, check_id(workflow_id, "workflow id"), tx=tx)
        reason = await self._waiting_reason(record)
        return self.info(record, waiting_reason=reason)

    async def history(self, workflow_id: str, *, tenant_id: str | None = None) -> list[Event]:
        """The workflow's events, oldest first (position = index + 1)."""
        tenant = self.tenant_for(tenant_id)
        return await self.store.get_history(tenant, check_id(workflow_id, "workflow id"))

    async def list(
        self,
        *,
        tenant_id: str | None = None,
        status: WorkflowStatus | str | None = None,
        name: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> list[WorkflowInfo]:
        """This tenant's workflows, newest first."""
        tenant = self.tenant_for(tenant_id)
        query = self.planner.list_query(tenant, status, name, limit, offset)
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
        tenant = self.tenant_for(tenant_id)
        wf_id = check_id(workflow_id, "workflow id")
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
        tenant = self.tenant_for(tenant_id)
        wf_id = check_id(workflow_id, "workflow id")
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
        await self.store.start_workflow(new)
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
        if record.status != WorkflowStatus.RUNNING or not record.workflow_task_pending:
            return None
        horizon = self.store.clock.now() - WORKER_LIVENESS
        workers = [w for w in await self.store.list_workers() if w.heartbeat_at >= horizon]
        wanted = (record.name, record.version)
        if any(tuple(t) == wanted for w in workers for t in w.workflow_types):
            return None
        others = sorted({v for w in workers for (n, v) in w.workflow_types if n == record.name})
        seen = f"; live workers run versions {others}" if others else ""
        return f"waiting for a worker that runs {record.name!r} version {record.version}{seen}"


class _LocalWorker(Protocol):
    """What the Engine needs of a Worker to start workflows eagerly on it."""

    worker_id: str
    lease: timedelta

    def reserve_slot(self, new: NewWorkflow) -> bool: ...

    def unreserve_slot(self) -> None: ...

    async def accept_eager(self, claim: WorkflowTaskClaim) -> None: ...


_LOCAL_WORKERS: dict[int, list[_LocalWorker]] = {}
"""Running Workers of this process, by ``id()`` of their store (eager start)."""


def local_workers(store: object) -> list[_LocalWorker]:
    return list(_LOCAL_WORKERS.get(id(store), ()))


def add_local_worker(store: object, worker: _LocalWorker) -> None:
    _LOCAL_WORKERS.setdefault(id(store), []).append(worker)


def remove_local_worker(store: object, worker: _LocalWorker) -> None:
    workers = _LOCAL_WORKERS.get(id(store))
    if workers is not None and worker in workers:
        workers.remove(worker)
        if not workers:
            del _LOCAL_WORKERS[id(store)]


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


async def prune_store(
    store: Store, older_than: timedelta, *, batch: int = 1000, max_batches: int | None = None
) -> int:
    """``store.prune`` in batches until a batch comes back short (see ``Engine.prune``)."""
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise InvalidArgument(f"older_than must be a non-negative timedelta, got {older_than!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgument(f"batch must be a positive integer, got {batch!r}")
    total = done = 0
    while max_batches is None or done < max_batches:
        deleted = await store.prune(older_than, batch)
        total += deleted
        done += 1
        if deleted < batch:
            break
    return total
