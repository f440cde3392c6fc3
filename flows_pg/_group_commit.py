"""Group commit on the SQL stores (``flows_core.store.GroupCommit``).

A group is built from the single operations, never from statements of its own: every
item is the ``Op`` its single method drives (``_commit_op``, ``_complete_op``, the
client ``start`` ops), and the group's transaction is the concatenation of each op's
first batch, sent in one pipeline. So whatever a single commit writes, a grouped one
writes too, each fenced as it is alone: a refused fence is a row count or a missing row
of that item's statements, never an error, and the other items commit.

Lock order: items go in the order of their workflow key (shard key, tenant, id), so two
groups (or a group and a single write) that lock the same workflows lock them in the
same order and cannot deadlock each other.

An error in the transaction (a value the server refuses, a deadlock with some other
writer) rolls the whole group back: each of its items is then run alone, in its own
transaction, so the one at fault gets its error and the others commit. A lost
connection gives every item of the group StoreUnavailable (whether it committed is
unknown; the callers' fenced retries find out).

Which items share a transaction is the variant's ``group_of``: PostgreSQL puts every
item in one; Citus only the items under one shard key (DESIGN.md idea 9: no transaction
across shards; a single-shard-key transaction is one router transaction on one node),
and runs the groups of different keys at once, on separate connections.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import psycopg

from flows_core.events import Event
from flows_core.store import (
    ActivityResult,
    StartRequest,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

from ._base import Batch, Op, Rows, SqlStore, _attempt, _Done, _resume, check_text

__all__ = ["GroupCommitSqlStore", "run_group"]

T = TypeVar("T")
WorkflowKey = tuple[str, str, str]
"""(shard key, tenant id, workflow id): the lock order of a group's items."""


class GroupCommitSqlStore(SqlStore, ABC):
    """A SqlStore with ``GroupCommit``: its variant brings the single write operations."""

    @abstractmethod
    def _commit_op(self, commit: WorkflowTaskCommit) -> Op[list[Event]]:
        """``commit_workflow_task`` as an operation (what the single method drives)."""

    @abstractmethod
    def _complete_op(self, result: ActivityResult) -> Op[None]:
        """``complete_activity`` as an operation (what the single method drives)."""

    def _group_of(self, key: WorkflowKey) -> str:
        """Items with the same value share a transaction (PostgreSQL: all)."""
        return ""

    async def _group(self, items: list[tuple[WorkflowKey, Op[T]]]) -> list[T | Exception]:
        return await run_group(
            items, lambda batch: self._execute(batch, None, True), self._group_of
        )

    async def commit_workflow_tasks(
        self, commits: Sequence[WorkflowTaskCommit]
    ) -> list[list[Event] | Exception]:
        items = [(_lease_key(c.lease), self._commit_op(c)) for c in commits]
        return await self._group(items)

    async def complete_activities(
        self, results: Sequence[ActivityResult]
    ) -> list[Exception | None]:
        items = [(_lease_key(r.lease), self._complete_op(r)) for r in results]
        return await self._group(items)

    async def start_workflows(
        self, starts: Sequence[StartRequest]
    ) -> list[WorkflowTaskClaim | Exception | None]:
        ops = await self._client_ops()
        local = list(self.own_workers) or None
        items: list[tuple[WorkflowKey, Op[WorkflowTaskClaim | None]]] = []
        for start in starts:
            new = start.new
            key = (new.shard_key, new.tenant_id, new.workflow_id)
            if start.owner is None or start.lease is None:
                items.append((key, _no_claim(ops.start(new, local))))
            else:
                items.append((key, ops.start_leased(new, owner=start.owner, lease=start.lease)))
        outcomes = await self._group(items)
        queued = any(
            s.owner is None and not isinstance(o, Exception)
            for s, o in zip(starts, outcomes, strict=True)
        )
        if local is not None and queued:
            self._listener.wake_work()  # this store's own workers: woken in-process
        return outcomes


def _lease_key(lease: Any) -> WorkflowKey:
    return (lease.shard_key, lease.tenant_id, lease.workflow_id)


def _no_claim(op: Op[None]) -> Op[WorkflowTaskClaim | None]:
    yield from op
    return None


async def run_group(
    items: list[tuple[WorkflowKey, Op[T]]],
    execute: Callable[[Batch], Awaitable[list[Rows]]],
    group_of: Callable[[WorkflowKey], str],
) -> list[T | Exception]:
    """Run the operations ``items`` (each with its workflow key), their first batches
    grouped into transactions by ``group_of`` (``execute`` runs one batch as one
    transaction); the outcome of each, in order: its value or its exception."""
    outcomes: list[Any] = [None] * len(items)  # each item gets its outcome below
    firsts: dict[int, Batch] = {}
    for i, (_, op) in enumerate(items):
        try:
            step = _resume(op, None)
            if isinstance(step, _Done):
                outcomes[i] = step.value
                continue
            check_text(step)  # refused text: this item only, before anything is sent
            firsts[i] = step
        except Exception as exc:
            outcomes[i] = exc

    async def finish(i: int, outcome: list[Rows] | psycopg.Error) -> None:
        """Resume item ``i`` with its first batch's outcome; run any later batch alone."""
        op = items[i][1]
        try:
            step = _resume(op, outcome)
            while not isinstance(step, _Done):
                step = _resume(op, await _attempt(execute(step)))
            outcomes[i] = step.value
        except Exception as exc:
            outcomes[i] = exc

    async def run(indices: list[int]) -> None:
        combined = [step for i in indices for step in firsts[i]]
        try:
            rows = await execute(combined)
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            for i in indices:  # committed or not: unknown; the fenced retry tells
                await finish(i, exc)
            return
        except psycopg.Error as exc:
            if len(indices) == 1:
                await finish(indices[0], exc)
                return
            for i in indices:  # rolled back: each alone, the one at fault fails alone
                await finish(i, await _attempt(execute(firsts[i])))
            return
        except Exception as exc:
            for i in indices:
                outcomes[i] = exc
            return
        offset = 0
        for i in indices:
            size = len(firsts[i])
            await finish(i, rows[offset : offset + size])
            offset += size

    groups: dict[str, list[int]] = {}
    for i in sorted(firsts, key=lambda i: items[i][0]):
        groups.setdefault(group_of(items[i][0]), []).append(i)
    if len(groups) == 1:
        await run(next(iter(groups.values())))
    elif groups:
        await asyncio.gather(*(run(indices) for indices in groups.values()))
    return outcomes
