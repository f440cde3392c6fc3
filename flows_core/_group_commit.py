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
from typing import Any, Final, Generic, TypeVar

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


_COMMITS: Final = (("commit_workflow_task",), "commit_workflow_tasks")
_COMPLETES: Final = (("complete_activity",), "complete_activities")
_STARTS: Final = (("start_workflow", "start_workflow_leased"), "start_workflows")


class StoreWrites:
    """The writes of one store through its group committers (see the module doc). Each
    method has the signature and meaning of the store's method of the same name.

    Whether a kind of write can be batched is looked up at each write and each batch
    (``batch_method``), so that a single method replaced later (a test's fault, a
    wrapper) is never bypassed."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._commits = GroupCommitter[WorkflowTaskCommit, list[Event]](
            self._commit_one, lambda items: self._grouped(items, _COMMITS, self._commit_one)
        )
        self._completes = GroupCommitter[ActivityResult, None](
            self._complete_one,
            lambda items: self._grouped(items, _COMPLETES, self._complete_one),
        )
        self._starts = GroupCommitter[StartRequest, WorkflowTaskClaim | None](
            self._start_one, lambda items: self._grouped(items, _STARTS, self._start_one)
        )

    def _batch(self, kind: tuple[tuple[str, ...], str]) -> Callable[..., Any] | None:
        """The store's batch method for ``kind`` if it covers every single method of it
        the store has (None: write one by one)."""
        singles, batch = kind
        method = None
        for single in singles:
            if single != singles[0] and getattr(self.store, single, None) is None:
                continue  # an optional single write the store does not have
            method = batch_method(self.store, single, batch)
            if method is None:
                return None
        return method

    async def _grouped(
        self,
        items: list[Item],
        kind: tuple[tuple[str, ...], str],
        one: Callable[[Item], Awaitable[R]],
    ) -> Sequence[R | Exception]:
        method = self._batch(kind)
        if method is not None:
            outcomes: Sequence[R | Exception] = await method(items)
            return outcomes
        return [await _outcome(one(item)) for item in items]  # replaced meanwhile

    async def _commit_one(self, commit: WorkflowTaskCommit) -> list[Event]:
        return await self.store.commit_workflow_task(commit)

    async def _complete_one(self, result: ActivityResult) -> None:
        await self.store.complete_activity(result)

    async def _start_one(self, start: StartRequest) -> WorkflowTaskClaim | None:
        if start.owner is None or start.lease is None:
            await self.store.start_workflow(start.new)
            return None
        leased: Callable[..., Awaitable[WorkflowTaskClaim]] = self.store.start_workflow_leased  # type: ignore[attr-defined]
        return await leased(start.new, owner=start.owner, lease=start.lease)

    async def commit_workflow_task(self, commit: WorkflowTaskCommit) -> list[Event]:
        if getattr(commit, "tx", None) is not None or self._batch(_COMMITS) is None:
            return await self._commit_one(commit)  # never grouped inside a caller's tx
        return await self._commits.submit(commit)

    async def complete_activity(self, result: ActivityResult) -> None:
        if self._batch(_COMPLETES) is None:
            await self._complete_one(result)
            return
        await self._completes.submit(result)

    async def start_workflow(self, new: NewWorkflow) -> None:
        start = StartRequest(new=new)
        if self._batch(_STARTS) is None:
            await self._start_one(start)
            return
        await self._starts.submit(start)

    async def start_workflow_leased(
        self, new: NewWorkflow, *, owner: str, lease: timedelta
    ) -> WorkflowTaskClaim:
        start = StartRequest(new=new, owner=owner, lease=lease)
        if self._batch(_STARTS) is None:
            claim = await self._start_one(start)
        else:
            claim = await self._starts.submit(start)
        assert claim is not None
        return claim

    @property
    def committers(self) -> dict[str, GroupCommitter[Any, Any] | None]:
        """The committers by kind; None for a kind this store cannot batch now (it goes
        through the single method)."""
        return {
            "commits": self._commits if self._batch(_COMMITS) else None,
            "completes": self._completes if self._batch(_COMPLETES) else None,
            "starts": self._starts if self._batch(_STARTS) else None,
        }


async def _outcome(write: Awaitable[R]) -> R | Exception:
    try:
        return await write
    except Exception as exc:
        return exc


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
