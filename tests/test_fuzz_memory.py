"""Fuzz every client entry point of the Engine on the memory store (see fuzz_support)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from fuzz_support import (
    SECRET_ID,
    SECRET_TENANT,
    Tally,
    fuzz_wf,
    one_case,
    run_cases,
)

import flows_core as flows
from flows_memory import MemoryStore

EXAMPLES = 300


def test_hostile_inputs_memory(capsys: pytest.CaptureFixture[str]) -> None:
    loop = asyncio.new_event_loop()
    store = MemoryStore()
    engine = flows.Engine(store, workflows=[fuzz_wf])
    loop.run_until_complete(
        engine.start(fuzz_wf, {"secret": True}, tenant_id=SECRET_TENANT, workflow_id=SECRET_ID)
    )
    tally = Tally()

    def one(**kw: Any) -> None:
        loop.run_until_complete(one_case(engine, tally, **kw))

    try:
        run_cases(EXAMPLES, one)
    finally:
        loop.close()
    assert tally.cases >= EXAMPLES // 2
    with capsys.disabled():
        print(f"\nmemory fuzz: {tally.cases} cases, {tally.calls} calls: {tally.outcomes}")
