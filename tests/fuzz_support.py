"""Hostile inputs for every public client entry point (shared by the memory and pg fuzz
tests): SQL fragments, NUL bytes, lone surrogates, huge strings, odd unicode, UUID-ish
strings, as tenant ids, workflow ids, workflow names, signal names and payloads.

Each call must give a correct result or a Flows error (``flows.FlowsError``): never a
raw driver error, never another tenant's workflow.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from hypothesis import strategies as st

import flows_core as flows

SECRET_TENANT = "tenant-a"
SECRET_ID = "secret-1"

SQL = [
    "' OR '1'='1",
    "x'; DROP TABLE flows.workflows; --",
    "%(tid)s",
    "%s",
    "{S}",
    "$1",
    "\\",
    '"; SELECT pg_sleep(1); --',
    "*/ SELECT 1 /*",
    "' UNION SELECT tenant_id, workflow_id FROM flows.workflows --",
    "E'\\x00'",
    "tenant-a",  # a real tenant's name, from another tenant's call
    "secret-1",
]
ODD = [
    "",
    " ",
    " lead",
    "trail ",
    "a\x00b",
    "\x00",
    "\ud800",
    "a\udfffb",
    "\u202e\u2066rtl",
    "ﬀ\u0301e\u0301",
    "😀" * 50,
    "\t",
    "line\nbreak",
    "\u2028",
    "x" * 200,
    "x" * 201,
    "é" * 200,
    "x" * 100_000,
    "00000000-0000-0000-0000-000000000000",
    "ffffffff-ffff-ffff-ffff-fffffffffff",
    "{00000000-0000-0000-0000-000000000000}",
    "0190e4a2-7c3b-7000-8000-zzzzzzzzzzzz",
]

hostile_text = st.one_of(
    st.sampled_from(SQL + ODD),
    st.text(min_size=0, max_size=40),
    st.text(alphabet=st.characters(codec=None), max_size=20),
    st.builds(lambda a, b: a + b, st.sampled_from(SQL), st.text(max_size=10)),
)

# Valid ids and names that still look hostile: most calls get past validation and reach
# the store (a call whose every argument is invalid only tests the validation).
_printable = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp", "Co", "Cn", "Zs")),
    min_size=1,
    max_size=30,
)
valid_hostile = st.one_of(
    st.sampled_from([s for s in SQL if s and s.strip() == s and s.isprintable()]),
    _printable,
    st.builds(lambda a, b: a + b, st.sampled_from(SQL[:4]), _printable),
)
hostile_text = st.one_of(hostile_text, valid_hostile, valid_hostile, valid_hostile)
tenants = st.one_of(hostile_text, st.sampled_from(["tenant-a", "tenant-b"]))

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    hostile_text,
)
hostile_payload = st.one_of(
    st.recursive(
        json_leaf,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(hostile_text, inner, max_size=4)
        ),
        max_leaves=10,
    ),
    st.just("p" * (2 * 1024 * 1024 + 1)),
    st.builds(object),
    st.just({1: 2}),
    st.just(b"\x00\xff bytes"),
)
statuses = st.one_of(
    st.none(), st.sampled_from([s.value for s in flows.WorkflowStatus]), hostile_text
)
ints = st.one_of(st.integers(-5, 50), st.sampled_from([-(2**63), 2**63, 2**80]))


@flows.workflow("fuzz-wf")
async def fuzz_wf(ctx: flows.WorkflowContext, x: Any) -> Any:
    return x


@dataclass
class Tally:
    """Outcomes per entry point: ok or the Flows error type's name."""

    cases: int = 0
    calls: int = 0
    outcomes: dict[str, dict[str, int]] = field(default_factory=dict)

    def add(self, op: str, outcome: str) -> None:
        self.calls += 1
        per = self.outcomes.setdefault(op, {})
        per[outcome] = per.get(outcome, 0) + 1


async def expect_flows(tally: Tally, op: str, call: Callable[[], Awaitable[Any]]) -> Any:
    """Run ``call``: its result, or None after a Flows error. Anything else fails."""
    try:
        value = await call()
    except flows.FlowsError as exc:
        tally.add(op, type(exc).__name__)
        return None
    except BaseException as exc:
        kind = f"{type(exc).__module__}.{type(exc).__name__}"
        raise AssertionError(f"{op} raised {kind}: {exc!r}") from exc
    tally.add(op, "ok")
    return value


def assert_not_secret(value: Any, tenant: object) -> None:
    """Nothing of SECRET_TENANT's may come back to another tenant's call."""
    if tenant == SECRET_TENANT:
        return
    infos = value if isinstance(value, list) else [value]
    for info in infos:
        if isinstance(info, flows.WorkflowInfo):
            assert info.tenant_id != SECRET_TENANT, f"leak to tenant {tenant!r}: {info}"
            assert info.tenant_id == tenant, f"tenant {tenant!r} got {info.tenant_id!r}'s"


def finite(x: Any) -> bool:
    return not (isinstance(x, float) and not math.isfinite(x))


async def one_case(
    engine: flows.Engine,
    tally: Tally,
    *,
    tenant: Any,
    workflow_id: Any,
    name: Any,
    signal_name: Any,
    payload: Any,
    status: Any,
    limit: Any,
    offset: Any,
    sync: Any = None,
) -> None:
    """Throw one set of hostile values at every entry point."""
    tally.cases += 1
    await expect_flows(
        tally,
        "start",
        lambda: engine.start(fuzz_wf, payload, tenant_id=tenant, workflow_id=workflow_id),
    )
    await expect_flows(tally, "start(name)", lambda: engine.start(name, payload, tenant_id=tenant))
    for wid in (workflow_id, SECRET_ID):
        # SECRET_ID is SECRET_TENANT's workflow: another tenant finds it only if it made
        # its own workflow of that id (in this case or an earlier one), never A's
        info = await expect_flows(
            tally, "query", lambda wid=wid: engine.query(wid, tenant_id=tenant)
        )
        assert_not_secret(info, tenant)
        hist = await expect_flows(
            tally, "history", lambda wid=wid: engine.history(wid, tenant_id=tenant)
        )
        if hist is not None:
            assert (info is None) == (not hist), "history without a workflow, or the reverse"
            assert all(getattr(e, "tenant_id", tenant) == tenant for e in hist), (
                "history of another tenant"
            )
        await expect_flows(
            tally,
            "signal",
            lambda wid=wid: engine.signal(wid, signal_name, payload, tenant_id=tenant),
        )
        await expect_flows(
            tally, "cancel", lambda wid=wid: engine.cancel(wid, reason=name, tenant_id=tenant)
        )
    listed = await expect_flows(
        tally,
        "list",
        lambda: engine.list(tenant_id=tenant, status=status, name=name, limit=limit, offset=offset),
    )
    assert_not_secret(listed, tenant)
    listed = await expect_flows(tally, "list(all)", lambda: engine.list(tenant_id=tenant))
    assert_not_secret(listed, tenant)
    if sync is not None:
        await sync(tally, tenant, workflow_id, name, signal_name, payload)


def run_cases(examples: int, run_one: Callable[..., None]) -> None:
    """Run ``run_one(**generated)`` on ``examples`` hostile cases (shared by every fuzz
    test, so memory and PostgreSQL see the same inputs)."""
    from hypothesis import HealthCheck, given, settings

    @settings(
        max_examples=examples,
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    @given(
        tenant=tenants,
        workflow_id=hostile_text,
        name=hostile_text,
        signal_name=hostile_text,
        payload=hostile_payload,
        status=statuses,
        limit=ints,
        offset=ints,
    )
    def case(**kw: Any) -> None:
        run_one(**kw)

    case()
