"""Transactional activities: what is checked at decoration and worker construction, and
the memory stand-in's contract (a simulated crash between the effect and the result
leaves no double effect). The store contract on every adapter: tests/contract/
test_contract_txact.py."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

import psycopg
import pytest

import flows_core as flows
from flows_core.events import ActivityCompleted
from flows_memory import MemoryStore, MemoryTransaction, TestEnvironment


class Crash(Exception):
    """A simulated crash of the store call (its transaction's fate is the fault point's)."""


def test_a_transactional_function_must_take_conn_and_input() -> None:
    with pytest.raises(flows.InvalidArgument, match=r"transactional=True.*\(conn, input\)"):

        @flows.activity("one-param", transactional=True)
        async def one(inp: str) -> str:
            return inp


def test_a_connection_of_the_wrong_kind_is_refused() -> None:
    with pytest.raises(flows.InvalidArgument, match="async but annotates a sync Connection"):

        @flows.activity("async-sync", transactional=True)
        async def wrong(conn: psycopg.Connection[Any], inp: str) -> str:
            return inp

    with pytest.raises(flows.InvalidArgument, match="sync but annotates an AsyncConnection"):

        @flows.activity("sync-async", transactional=True)
        def wrong_too(conn: psycopg.AsyncConnection[Any], inp: str) -> str:
            return inp


def test_the_right_signatures_are_taken() -> None:
    @flows.activity("ok-async", transactional=True)
    async def a(conn: psycopg.AsyncConnection[Any], inp: int) -> str:
        return str(inp)

    @flows.activity("ok-sync", transactional=True)
    def b(conn: psycopg.Connection[Any], inp: int) -> str:
        return str(inp)

    assert (a.transactional, a.input_type, a.output_type) == (True, int, str)
    assert (b.transactional, b.is_async) == (True, False)


def test_a_store_without_the_capability_is_refused() -> None:
    @flows.activity("needs-tx", transactional=True)
    async def act(conn: Any, inp: int) -> int:
        return inp

    class Plain:  # a store proxy that hides run_transaction
        def __init__(self, store: MemoryStore) -> None:
            self._store = store

        def __getattr__(self, name: str) -> Any:
            if name in ("run_transaction", "check_transaction_pool"):
                raise AttributeError(name)
            return getattr(self._store, name)

    with pytest.raises(flows.InvalidArgument, match=r"\['needs-tx'\] are transactional"):
        flows.Worker(Plain(MemoryStore()), activities=[act])  # type: ignore[arg-type]


def _flaky(point: tuple[str, Literal["before", "after"]]) -> tuple[Any, list[int]]:
    """A fault hook whose first call at ``point`` raises (a crash there)."""
    fired = [0]

    def hook(op: str, when: Literal["before", "after"]) -> None:
        if (op, when) == point and not fired[0]:
            fired[0] = 1
            raise Crash(f"{op} {when}")

    return hook, fired


@pytest.mark.parametrize("when", ["before", "after"])
async def test_a_crash_at_the_commit_leaves_no_double_effect(
    when: Literal["before", "after"],
) -> None:
    """The store call that records the result fails before it wrote (the stand-in's
    transaction is dropped with it) or after (it committed, the reply was lost): either
    way the effect is there exactly once and the result is recorded once."""
    hook, fired = _flaky(("commit_workflow_task", when))

    @flows.activity("pay", transactional=True)
    def pay(conn: MemoryTransaction, invoice: str) -> str:
        conn.insert("payments", invoice, {"paid": True})
        return invoice

    @flows.workflow("billing")
    async def billing(ctx: flows.WorkflowContext, invoice: str) -> str:
        return await ctx.execute(pay, invoice)

    async with TestEnvironment(
        fault_hook=hook, workflows=[billing], activities=[pay], workflow_task_backoff=timedelta(0)
    ) as env:
        run = await env.engine.start(billing, "inv-1")
        assert await env.result(run) == "inv-1"
        history = await env.engine.history(run.workflow_id)
    assert fired == [1]
    assert env.store.app_tables.table("payments") == {"inv-1": {"paid": True}}
    assert len([e for e in history if isinstance(e, ActivityCompleted)]) == 1
