"""Group commit across workflows (DESIGN.md idea 7): the writes of different workflows
that become ready while one of the same kind is in flight share the next store call
(``flows_core.store.GroupCommit``; one transaction on PostgreSQL, one per shard key on
Citus), each still fenced and decided on its own.

The classic leader/follower pattern, per store and per kind of write (workflow task
commits, activity results, starts): a write made while none is in flight goes at once,
alone, through the store's single method; writes made while one is in flight queue,
and go together, in one call, as soon as it ends. Nothing waits for a batch to fill.

``group_writes(store)`` gives the entry points the Worker and the Engine call instead of
the store's single methods. A store without the capability, or whose single method was
replaced by something the batch would bypass (a proxy or wrapper that injects faults or
counts calls, at the instance or in a subclass), keeps its single method.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import Any, Generic, TypeVar

from .events import Event
from .store import (
    ActivityResult,
    NewWorkflow,
    StartRequest,
    Store,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

__all__ = ["GroupCommitter", "StoreWrites", "batch_method", "group_writes", "grouped"]

Item = TypeVar("Item")
R = TypeVar("R")

MAX_BATCH = 64
"""Most items in one store call (bounds a transaction's size and its statement)."""

MAX_IN_FLIGHT = 1
"""Store calls of one kind in flight at once, per store (the classic group commit)."""


class GroupCommitter(Generic[Item, R]):
    """Leader/follower group commit of one kind of write.

    ``submit(item)`` with fewer than ``max_in_flight`` calls in flight and nothing queued
    calls ``single(item)`` at once (the caller leads). Otherwise the item queues; each
    time a call ends, what is queued goes in the next one (up to ``max_batch`` items),
    through ``batch`` (a single item through ``single``). ``batch`` returns one outcome
    per item, in order: a value, or the exception that item raises to its submitter. An
    exception raised by ``batch`` itself goes to every submitter of that call. A
    submitter cancelled before its item was sent takes it out (it is not written)."""

    def __init__(
        self,
        single: Callable[[Item], Awaitable[R]],
        batch: Callable[[list[Item]], Awaitable[Sequence[R | Exception]]],
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._single = single
        self._batch = batch
        self.max_batch = max(1, max_batch)
        self.max_in_flight = max(1, max_in_flight)
        self._queue: list[tuple[Item, asyncio.Future[R]]] = []
        self._in_flight = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self.calls = 0
        """Store calls made (single and batched)."""
        self.batched = 0
        """Items that went in a batch of two or more."""

    async def submit(self, item: Item) -> R:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests): start clean
            self._loop, self._queue, self._in_flight, self._senders = loop, [], 0, set()
        if self._in_flight < self.max_in_flight and not self._queue:
            self._in_flight += 1
            self.calls += 1
            try:
                return await self._single(item)
            finally:
                self._in_flight -= 1
                self._kick()
        fut: asyncio.Future[R] = loop.create_future()
        self._queue.append((item, fut))
        return await fut

    def _kick(self) -> None:
        """Send what is queued, while fewer than ``max_in_flight`` calls are in flight."""
        while self._queue and self._in_flight < self.max_in_flight:
            head, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            taken = [(item, fut) for item, fut in head if not fut.done()]
            if taken:
                self._in_flight += 1
                sender = asyncio.ensure_future(self._flush(taken))
                self._senders.add(sender)  # a strong reference while it runs
                sender.add_done_callback(self._senders.discard)

    async def _flush(self, taken: list[tuple[Item, asyncio.Future[R]]]) -> None:
        try:
            outcomes = await self._send([item for item, _ in taken])
            for (_, fut), outcome in zip(taken, outcomes, strict=True):
                if fut.done():
                    continue
                if isinstance(outcome, BaseException):
                    fut.set_exception(outcome)
                else:
                    fut.set_result(outcome)
        except BaseException:  # cancelled (the loop shuts down): nobody is left waiting
            for _, fut in taken:
                fut.cancel()
            raise
        finally:
            self._in_flight -= 1
            self._kick()

    async def _send(self, items: list[Item]) -> Sequence[R | Exception]:
        self.calls += 1
        try:
            if len(items) == 1:
                return [await self._single(items[0])]
            self.batched += len(items)
            outcomes = await self._batch(items)
        except Exception as exc:
            return [exc] * len(items)
        if len(outcomes) != len(items):
            raise RuntimeError(f"a batched write gave {len(outcomes)} outcomes for {len(items)}")
        return outcomes


def batch_method(store: Any, single: str, batch: str) -> Callable[..., Any] | None:
    """``store``'s method ``batch`` if it writes what ``store.<single>`` writes: it is
    defined at least as close to ``store`` as ``single`` is (on the instance, or in the
    same or a more derived class), or the closest ``single`` is marked ``grouped``.
    None if the store has no such method, or if ``single`` was replaced below it (a
    wrapper the batch would bypass)."""
    method: Callable[..., Any] | None = getattr(store, batch, None)
    if method is None or getattr(method, "__self__", None) is not store:
        return None  # missing, or forwarded to another object (a proxy)
    instance = vars(store) if hasattr(store, "__dict__") else {}
    if single in instance:
        return method if batch in instance else None
    if batch in instance:
        return method
    for klass in type(store).__mro__:
        if batch in vars(klass):
            return method
        if single in vars(klass):
            return method if getattr(vars(klass)[single], "__grouped__", False) else None
    return None


F = TypeVar("F", bound=Callable[..., Any])


def grouped(method: F) -> F:
    """Mark a store's single write as one its group method (defined in a base class)
    applies exactly, item by item: ``batch_method`` then groups it, unless something
    replaces the single write again below it."""
    method.__grouped__ = True  # type: ignore[attr-defined]
    return method


class StoreWrites:
    """The writes of one store through its group committers (see the module doc). Each
    method has the signature and meaning of the store's method of the same name."""

    def __init__(self, store: Store) -> None:
        self.store = store
        commits = batch_method(store, "commit_workflow_task", "commit_workflow_tasks")
        completes = batch_method(store, "complete_activity", "complete_activities")
        starts = batch_method(store, "start_workflow", "start_workflows")
        if starts is not None and getattr(store, "start_workflow_leased", None) is not None:
            # plain and leased starts share the committer: both must be batchable
            starts = batch_method(store, "start_workflow_leased", "start_workflows")
        self._commits = (
            None
            if commits is None
            else GroupCommitter[WorkflowTaskCommit, list[Event]](
                lambda commit: self.store.commit_workflow_task(commit), commits
            )
        )
        self._completes = (
            None
            if completes is None
            else GroupCommitter[ActivityResult, None](
                lambda result: self.store.complete_activity(result), completes
            )
        )
        self._starts = (
            None
            if starts is None
            else GroupCommitter[StartRequest, WorkflowTaskClaim | None](self._start_one, starts)
        )

    async def _start_one(self, start: StartRequest) -> WorkflowTaskClaim | None:
        if start.owner is None or start.lease is None:
            await self.store.start_workflow(start.new)
            return None
        leased: Callable[..., Awaitable[WorkflowTaskClaim]] = self.store.start_workflow_leased  # type: ignore[attr-defined]
        return await leased(start.new, owner=start.owner, lease=start.lease)

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        if self._commits is None or getattr(commit, "tx", None) is not None:
            return await self.store.commit_workflow_task(commit)
        return await self._commits.submit(commit)

    async def complete_activity(self, result: ActivityResult) -> None:
        if self._completes is None:
            await self.store.complete_activity(result)
            return
        await self._completes.submit(result)

    async def start_workflow(self, new: NewWorkflow) -> None:
        if self._starts is None:
            await self.store.start_workflow(new)
            return
        await self._starts.submit(StartRequest(new=new))

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        if self._starts is None:
            leased: Callable[..., Awaitable[WorkflowTaskClaim]] = self.store.start_workflow_leased  # type: ignore[attr-defined]
            return await leased(new, owner=owner, lease=lease)
        claim = await self._starts.submit(StartRequest(new=new, owner=owner, lease=lease))
        assert claim is not None
        return claim

    @property
    def committers(self) -> dict[str, GroupCommitter[Any, Any] | None]:
        """The committers by kind (None: that kind goes through the single method)."""
        return {"commits": self._commits, "completes": self._completes, "starts": self._starts}


_writes: weakref.WeakKeyDictionary[Any, StoreWrites] = weakref.WeakKeyDictionary()


def group_writes(store: Store) -> StoreWrites:
    """The ``StoreWrites`` of ``store``, one per store object (shared by the Workers and
    Engines of a process that use it, so that all their writes group together)."""
    try:
        found = _writes.get(store)
    except TypeError:  # not weakly referenceable: a private one
        return StoreWrites(store)
    if found is None:
        found = _writes[store] = StoreWrites(store)
    return found
