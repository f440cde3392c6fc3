"""``TestEnvironment``: run workflows in memory with time skipping."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from flows_core import Activity, Engine, InvalidArgument, Run, Worker, Workflow, WorkflowInfo

from ._clock import VirtualClock
from ._store import FaultHook, MemoryStore

__all__ = ["TestEnvironment"]

O = TypeVar("O")  # noqa: E741


class TestEnvironment:
    """An in-memory store, a virtual clock, an engine and in-process workers.

    Whenever every worker is idle and nothing is claimable, the clock jumps to the next
    timer (or retry, or lease expiry), so a workflow that sleeps 30 days finishes in
    milliseconds::

        async with TestEnvironment(workflows=[order], activities=[charge]) as env:
            run = await env.engine.start(order, OrderIn(...))
            await env.engine.signal(run.workflow_id, "warehouse-ready", {...})
            out = await env.result(run)

    ``time_skipping=False`` keeps the clock still; move it with ``await env.advance(...)``,
    which first lets the workers finish what they can (a workflow just signalled reaches
    its next sleep), then moves the clock and lets them handle what fell due.

    Every timeout here (``run.result(timeout=)``, ``env.result``, ``env.wait_until``,
    ``env.wait_idle``) counts real seconds: the virtual clock may never move while a
    workflow waits for a signal nobody sends.
    """

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        *,
        workflows: Iterable[Workflow[Any, Any]] = (),
        activities: Iterable[Activity[Any, Any]] = (),
        workers: int = 1,
        concurrency: int = 10,
        start: datetime | None = None,
        time_skipping: bool = True,
        lease: timedelta = timedelta(seconds=30),
        fault_hook: FaultHook | None = None,
        **worker_options: Any,
    ) -> None:
        self.workflows = list(workflows)
        self.activities = list(activities)
        self.clock = VirtualClock(start)
        self.store = MemoryStore(clock=self.clock, fault_hook=fault_hook)
        self.engine: Engine = _WallTimeEngine(self.store, workflows=self.workflows)
        self.time_skipping = time_skipping
        self.workers = [
            Worker(
                self.store,
                workflows=self.workflows,
                activities=self.activities,
                concurrency=concurrency,
                poll_interval=0.05,
                lease=lease,
                worker_id=f"test-worker-{n}",
                **worker_options,
            )
            for n in range(workers)
        ]
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> TestEnvironment:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the workers (and the time skipper)."""
        for worker in self.workers:
            self._tasks.append(asyncio.ensure_future(worker.run()))
        if self.time_skipping:
            self._tasks.append(asyncio.ensure_future(self._skip_time()))

    async def stop(self) -> None:
        """Stop the workers and the time skipper."""
        for worker in self.workers:
            await worker.stop(grace_period=1.0)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def advance(
        self, delta: timedelta | float, *, wait_idle: bool = True, timeout: float = 30.0
    ) -> None:
        """Move the virtual clock forward by ``delta`` (a timedelta or seconds).

        First waits until the workers are idle (so a workflow that was just started or
        signalled reaches its sleep before time moves), then moves the clock, wakes the
        workers and waits until they are idle again. ``wait_idle=False`` moves the clock
        at once, under running workers (to let a lease expire mid-activity, say).
        ``timeout`` bounds each wait, in real seconds. With ``wait_idle``, the clock
        stops at each time a durable schedule fires on the way (``Engine.schedule``),
        so advancing by a day fires each tick of the day at its time, in order.
        """
        if not isinstance(delta, timedelta):
            delta = timedelta(seconds=delta)
        if delta < timedelta(0):
            raise InvalidArgument("a clock cannot go backwards")
        target = self.clock.now() + delta
        if wait_idle:
            await self.wait_idle(timeout=timeout)
            while True:
                due = _earliest(
                    await self.store.next_schedule_due(None),
                    await self.store.next_pending_start_due(None),
                )
                if due is None or due > target or due <= self.clock.now():
                    break
                self.clock.set(due)
                self.store.notify_work()
                await self.wait_idle(timeout=timeout)
        self.clock.set(target)
        self.store.notify_work()
        if wait_idle:
            await self.wait_idle(timeout=timeout)

    def idle(self) -> bool:
        """Every worker idle and nothing claimable now."""
        return all(w.idle for w in self.workers) and not self.store.has_claimable_work()

    async def _skip_time(self) -> None:
        quiet = 0
        while True:
            await asyncio.sleep(0.002)
            if not self.idle():
                quiet = 0
                continue
            quiet += 1
            if quiet < 3:
                continue
            debounced = await self.store.next_pending_start_due(None)
            due = _earliest(await self.store.next_due(None), debounced)
            if due is not None:
                # never past a schedule's tick (but never only for one: time would run on)
                ticks = await self.store.next_schedule_due(None)
                if ticks is not None and ticks < due:
                    due = ticks
                self.clock.set(due)
                self.store.notify_work()
            quiet = 0

    async def result(self, run: Run[O], *, timeout: float = 30.0) -> O:
        """Wait (at most ``timeout`` real seconds) for ``run`` and return its output."""
        return await run.result(timeout=timeout)

    async def wait_until(
        self, run: Run[Any], predicate: Any, *, timeout: float = 30.0
    ) -> WorkflowInfo:
        """Poll ``run``'s info until ``predicate(info)`` is true (real-time ``timeout``)."""

        seen: list[WorkflowInfo] = []

        async def poll() -> WorkflowInfo:
            while True:
                info = await run.query()
                if predicate(info):
                    return info
                seen[:] = [info]
                await asyncio.sleep(0.005)

        try:
            return await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            last = f"; it is {seen[0].status}" if seen else ""
            raise TimeoutError(
                f"workflow {run.workflow_id!r} did not reach the awaited state within "
                f"{timeout} s (real time){last}"
            ) from None

    async def wait_idle(self, *, timeout: float = 30.0) -> None:
        """Wait until nothing is left to do without moving the clock."""

        async def poll() -> None:
            quiet = 0
            while quiet < 5:
                await asyncio.sleep(0.002)
                quiet = quiet + 1 if self.idle() else 0

        try:
            await asyncio.wait_for(poll(), timeout)
        except TimeoutError:
            busy = [w.worker_id for w in self.workers if not w.idle]
            raise TimeoutError(
                f"the workers were not idle within {timeout} s (real time); busy: {busy}, "
                f"claimable work: {self.store.has_claimable_work()}"
            ) from None


class _WallTimeEngine(Engine):
    """An Engine whose ``wait_for_result`` timeout counts real seconds, not virtual ones."""

    async def wait_for_result(
        self, workflow_id: str, *, timeout: float | None = None, **options: Any
    ) -> Any:
        waiting = super().wait_for_result(workflow_id, **options)
        if timeout is None:
            return await waiting
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            info = await self.query(workflow_id, tenant_id=options.get("tenant_id"))
            raise TimeoutError(
                f"workflow {workflow_id!r} still {info.status} after {timeout} s (real time)"
            ) from None


def _earliest(*times: datetime | None) -> datetime | None:
    """The earliest of ``times`` that are not None (None if all are)."""
    found = [t for t in times if t is not None]
    return min(found) if found else None
