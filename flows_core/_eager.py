"""Eager workflow start: an Engine hands a workflow it starts straight to a Worker of
the same process, through an ``EagerStarts`` object the two share.

::

    eager = flows.EagerStarts()
    worker = flows.Worker(store, workflows=[order], activities=acts, eager=eager)
    engine = flows.Engine(store, workflows=[order], eager=eager)

While the worker runs it is listed in ``eager``; ``engine.start`` then asks it for a
slot and, when the store offers ``start_workflow_leased`` (an optional capability,
``flows_core.store.EagerStart``), starts the workflow with its first workflow task
already leased to that worker: no claim transaction, no work notification. Without a
shared ``EagerStarts`` (the default) every start goes through the queue.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from ._group_commit import group_writes
from .store import NewWorkflow, Store, WorkflowTaskClaim

__all__ = ["EagerStarts", "LocalWorker"]


class LocalWorker(Protocol):
    """What an eager start needs of a Worker (``flows.Worker`` is one)."""

    @property
    def store(self) -> Store: ...

    @property
    def worker_id(self) -> str: ...

    @property
    def lease(self) -> timedelta: ...

    def reserve_slot(self, new: NewWorkflow) -> bool: ...

    def unreserve_slot(self) -> None: ...

    async def accept_eager(self, claim: WorkflowTaskClaim) -> None: ...


class EagerStarts:
    """The running Workers an Engine of the same process may start workflows on
    (eager start). Share one between Engines and Workers of one process: pass it as
    ``eager=`` to both. A Worker is listed while it runs."""

    def __init__(self) -> None:
        self._workers: list[LocalWorker] = []

    @property
    def workers(self) -> list[LocalWorker]:
        """The Workers listed now (running ones)."""
        return list(self._workers)

    def add(self, worker: LocalWorker) -> None:
        if worker not in self._workers:
            self._workers.append(worker)

    def remove(self, worker: LocalWorker) -> None:
        if worker in self._workers:
            self._workers.remove(worker)

    async def start(self, store: Store, new: NewWorkflow) -> bool:
        """Start ``new`` leased to a listed Worker on ``store`` (the same object) that
        serves it and has room, and hand the claim over in-process. False when none
        can take it or the store cannot start leased (the caller then starts it the
        ordinary way); nothing is written then."""
        start_leased = getattr(store, "start_workflow_leased", None)
        if start_leased is None:
            return False
        for worker in self._workers:
            if worker.store is store and worker.reserve_slot(new):
                break
        else:
            return False
        try:
            # grouped with the starts in flight from this process (flows_core._group_commit)
            writes = group_writes(store)
            claim = await writes.start_workflow_leased(
                new, owner=worker.worker_id, lease=worker.lease
            )
        except BaseException:
            worker.unreserve_slot()
            raise
        await worker.accept_eager(claim)
        return True
