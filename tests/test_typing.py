"""The public API is typed: mypy infers activity outputs and rejects wrong inputs."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

mypy_api = pytest.importorskip("mypy.api")

SNIPPET = textwrap.dedent(
    """
    import msgspec
    import psycopg
    import flows_core as flows

    class ChargeIn(msgspec.Struct):
        customer_id: str
        amount: int

    class ChargeOut(msgspec.Struct):
        success: bool

    @flows.activity("charge-payment", retry=flows.RetryPolicy(max_attempts=5))
    async def charge_payment(inp: ChargeIn) -> ChargeOut:
        return ChargeOut(success=True)

    @flows.activity("sync-one")
    def sync_one(n: int) -> str:
        return str(n)

    @flows.activity("reserve", transactional=True)
    async def reserve(conn: psycopg.AsyncConnection, sku: str) -> int:
        return 1

    @flows.activity("mark", transactional=True)
    def mark(conn: psycopg.Connection, n: int) -> str:
        return str(n)

    @flows.workflow("order", version=1)
    async def order(ctx: flows.WorkflowContext, inp: ChargeIn) -> bool:
        paid = await ctx.execute(charge_payment, ChargeIn("c", 1))
        reveal_type(paid)
        text = await ctx.execute(sync_one, 3)
        reveal_type(text)
        a, b = await flows.gather(ctx.execute(sync_one, 1), ctx.execute(charge_payment, inp))
        reveal_type(b)
        maybe = await ctx.wait_for_signal("s", int, timeout=5)
        reveal_type(maybe)
        reserved = await ctx.execute(reserve, "sku")
        reveal_type(reserved)
        marked = await ctx.execute(mark, 2)
        reveal_type(marked)
        await ctx.execute(charge_payment, "wrong")  # line WRONG_INPUT
        return paid.success

    reveal_type(order)

    async def client(engine: flows.Engine) -> None:
        run = await engine.start(order, ChargeIn("c", 1))
        reveal_type(await run.result())
        await engine.start(order, 42)  # line WRONG_START
    """
)


def test_mypy_infers_and_rejects(tmp_path: Path) -> None:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    out, _err, _status = mypy_api.run(["--strict", "--no-incremental", str(path)])
    lines = out.splitlines()

    def line_of(marker: str) -> int:
        return next(i for i, ln in enumerate(SNIPPET.splitlines(), 1) if marker in ln)

    def revealed(marker: str) -> str:
        prefix = f"snippet.py:{line_of(marker)}: note: Revealed type is "
        found = [ln.split(prefix, 1)[1] for ln in lines if prefix in ln]
        assert found, out
        return found[0].replace("builtins.", "").strip('"')

    assert revealed("reveal_type(paid)") == "snippet.ChargeOut"
    assert revealed("reveal_type(text)") == "str"
    assert revealed("reveal_type(b)") == "snippet.ChargeOut"
    assert revealed("reveal_type(maybe)") == "int | None"
    assert revealed("reveal_type(reserved)") == "int", "a transactional async activity"
    assert revealed("reveal_type(marked)") == "str", "a transactional sync activity"
    assert revealed("reveal_type(order)").endswith("Workflow[snippet.ChargeIn, bool]")
    assert revealed("reveal_type(await run.result())") == "bool"
    wrong_input = f"snippet.py:{line_of('WRONG_INPUT')}: error"
    wrong_start = f"snippet.py:{line_of('WRONG_START')}: error"
    assert any(wrong_input in ln for ln in lines), out
    assert any(wrong_start in ln for ln in lines), out
    errors = [ln for ln in lines if ": error:" in ln]
    assert len(errors) == 2, out
