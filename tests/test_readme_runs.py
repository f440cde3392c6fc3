"""The README's continue-as-new and published-status snippet does what the text says: the
status is visible in query, the account continues as new every 500 deposits, the result
follows the chain, and earlier runs stay readable."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import msgspec

import flows_core as flows
from flows_memory import MemoryStore
from tests.contract.test_contract_engine import result, running, worker

README = Path(__file__).resolve().parents[1] / "README.md"


def snippet() -> dict[str, Any]:
    text = README.read_text()
    section = text.split("### Long-lived workflows", 1)[1].split("\n### ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python snippet in the README's Long-lived workflows section"
    namespace: dict[str, Any] = {"flows": flows, "msgspec": msgspec}
    exec(compile(match.group(1), str(README), "exec"), namespace)
    return namespace


async def test_the_account_snippet() -> None:
    ns = snippet()
    account, state, progress = ns["account"], ns["Account"], ns["Progress"]
    store = MemoryStore()
    engine = flows.Engine(store, workflows=[account])
    run = await engine.start(account, state(), workflow_id="acct-1")
    for _ in range(600):
        await engine.signal("acct-1", "deposit", 2)
    await engine.signal("acct-1", "deposit", 0)
    async with running(worker(store, workflows=[account])):
        assert await result(run) == 1200
    info = await run.query()
    assert info.run_number == 2
    assert info.status_value(progress) == progress(balance=1200, handled=600)
    runs = await engine.runs("acct-1")
    assert [(r.run_number, r.status) for r in runs] == [(1, "continued"), (2, "completed")]
    assert runs[1].input == {"balance": 1000, "handled": 500}
    first = await engine.history("acct-1", run_number=1)
    assert type(first[-1]).__name__ == "WorkflowContinuedAsNew"
