"""Values and evolution: NaN and infinity are refused (never silently null), routine
changes to activity inputs do not park running workflows (checked against histories
recorded by the old code), and ids given as UUIDs are their canonical strings."""

from __future__ import annotations

import collections
import math
import uuid
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from history_support import T0, started_event

import flows_core as flows
from flows_core._codec import encode_payload
from flows_core.events import ActivityScheduled, SignalReceived, SignalWaitStarted
from flows_memory import TestEnvironment

RUNS: collections.Counter[str] = collections.Counter()


# -- NaN and infinity --


class Reading(msgspec.Struct):
    sensor: str
    values: list[float]


@pytest.mark.parametrize(
    ("value", "where"),
    [
        (float("nan"), "nan at $"),
        (float("inf"), "inf at $"),
        ({"a": [1.0, float("-inf")]}, "-inf at $.a[1]"),
        (Reading("s1", [0.5, float("nan")]), "nan at $.values[1]"),
    ],
)
def test_encode_refuses_nan_and_infinity_naming_where(value: object, where: str) -> None:
    with pytest.raises(flows.PayloadError, match="JSON has no NaN") as info:
        encode_payload(value, what="output of activity 'x'")
    assert where in str(info.value)
    assert "output of activity 'x'" in str(info.value)


def test_encode_still_takes_null_and_decimal_nan() -> None:
    assert bytes(encode_payload({"a": None, "b": [None]})) == b'{"a":null,"b":[null]}'
    assert bytes(encode_payload(Decimal("NaN"))) == b'"NaN"'
    assert bytes(encode_payload(math.pi)) == repr(math.pi).encode()


@flows.activity("vals-measure", retry=flows.RetryPolicy(max_attempts=5))
async def measure(kind: str) -> float:
    RUNS[kind] += 1
    return {"nan": float("nan"), "inf": float("inf")}.get(kind, 1.5)


@flows.activity("vals-measure-any", retry=flows.RetryPolicy(max_attempts=5))
async def measure_any(kind: str) -> Any:
    RUNS[kind] += 1
    return {"reading": [1.0, float("nan")]}


@flows.workflow("vals-nan")
async def nan_workflow(ctx: flows.WorkflowContext, kind: str) -> str:
    try:
        if kind == "any":
            value = await ctx.execute(measure_any, kind)
        else:
            value = await ctx.execute(measure, kind)
    except flows.ActivityFailed as exc:
        return f"{exc.error_type}: {exc.message}"
    return f"value {value!r}"


@pytest.mark.parametrize("kind", ["nan", "inf", "any"])
async def test_activity_returning_nan_fails_with_payload_error_never_none(kind: str) -> None:
    RUNS.clear()
    async with TestEnvironment(workflows=[nan_workflow], activities=[measure, measure_any]) as env:
        run = await env.engine.start(nan_workflow, kind)
        out = await run.result(timeout=10)
    assert out.startswith("PayloadError: output of activity"), out
    assert "JSON has no NaN" in out
    assert RUNS[kind] == 1  # not retried: the same value would be refused again


async def test_workflow_output_nan_fails_the_workflow() -> None:
    @flows.workflow("vals-nan-output")
    async def wf(ctx: flows.WorkflowContext, _: None) -> float:
        return float("nan")

    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None)
        with pytest.raises(flows.WorkflowFailed, match="JSON has no NaN"):
            await run.result(timeout=10)


async def test_engine_refuses_nan_input() -> None:
    async with TestEnvironment(workflows=[nan_workflow]) as env:
        with pytest.raises(flows.PayloadError, match="JSON has no NaN"):
            await env.engine.start(nan_workflow, float("nan"))  # type: ignore[arg-type]


# -- evolution: histories recorded by the old code, replayed by the new --


class AddressV1(msgspec.Struct):
    street: str


class AddressV2(msgspec.Struct):
    street: str
    zip: str | None = None


class AddressRequiredZip(msgspec.Struct):
    street: str
    zip: str


class Payment(msgspec.Struct):
    amount: float
    currency: str = "EUR"


def _activity(name: str, input_type: Any) -> flows.Activity[Any, str]:
    async def fn(value: Any) -> str:
        RUNS[name] += 1
        return "ok"

    fn.__annotations__ = {"value": input_type, "return": str}
    return flows.Activity(name, fn)


def _workflow(act: flows.Activity[Any, str], make_input: Any) -> flows.Workflow[None, str]:
    async def wf(ctx: flows.WorkflowContext, _: None) -> str:
        first = await ctx.execute(act, make_input())
        second = await ctx.wait_for_signal("go", str)
        return f"{first} {second}"

    wf.__annotations__ = {"ctx": flows.WorkflowContext, "_": None, "return": str}
    return flows.Workflow("vals-evolve", wf)


async def _recorded_history(act: flows.Activity[Any, str], make_input: Any) -> list[flows.Event]:
    """Run the OLD code until it waits for the signal; return its history."""
    old = _workflow(act, make_input)
    async with TestEnvironment(workflows=[old], activities=[act]) as env:
        run = await env.engine.start(old, None)
        await env.wait_until(run, lambda i: i.history_length >= 4, timeout=10)
        await env.wait_idle()
        history = await env.engine.history(run.workflow_id)
    assert isinstance(history[-1], SignalWaitStarted), history
    return history


CHANGES: dict[str, tuple[Any, Any, Any, Any]] = {
    # name: (old input type, old input, new input type, new input)
    "optional field added": (AddressV1, lambda: AddressV1("main st"), AddressV2, None),
    "optional field dropped": (AddressV2, lambda: AddressV2("main st"), AddressV1, None),
    "int becomes float": (Payment, lambda: {"amount": 5}, Payment, lambda: Payment(5.0)),
    "keys reordered": (
        dict[str, int],
        lambda: {"b": 1, "a": 2},
        dict[str, int],
        lambda: {"a": 2, "b": 1},
    ),
    "untyped int becomes float": (Any, lambda: [1, {"n": 2}], Any, lambda: [1.0, {"n": 2.0}]),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
async def test_routine_input_change_does_not_park_a_recorded_run(change: str) -> None:
    old_type, old_input, new_type, new_input = CHANGES[change]
    name = "vals-ship"
    history = await _recorded_history(_activity(name, old_type), old_input)
    scheduled = [e for e in history if isinstance(e, ActivityScheduled)]
    assert len(scheduled) == 1
    new_input = new_input or (lambda: new_type("main st"))
    new = _workflow(_activity(name, new_type), new_input)
    act = flows.replay(new, history, history[-1].at + timedelta(seconds=1))
    assert act.park_error is None, act.park_error
    assert act.new_events == []
    # and the run goes on with the new code
    go = SignalReceived(name="go", payload=msgspec.Raw(b'"now"'), signal_id="s1", at=history[-1].at)
    done = flows.replay(new, [*history, go], history[-1].at + timedelta(seconds=2))
    assert done.park_error is None
    assert done.finished


GOLDEN = Path(__file__).parent / "golden"


def test_golden_history_of_the_old_code_replays_with_the_new_struct() -> None:
    """evolve_address_v1.json was recorded (and pretty-printed) when the input of
    vals-ship was AddressV1; the code now sends AddressV2 with its default zip."""
    data = (GOLDEN / "evolve_address_v1.json").read_bytes()
    history = msgspec.json.decode(data, type=list[flows.Event])
    new = _workflow(_activity("vals-ship", AddressV2), lambda: AddressV2("main st"))
    act = flows.replay(new, history, history[-1].at)
    assert act.park_error is None, act.park_error
    assert act.new_events == []
    go = SignalReceived(name="go", payload=msgspec.Raw(b'"now"'), signal_id="s1", at=T0)
    done = flows.replay(new, [*history, go], T0)
    assert done.finished
    assert done.park_error is None


@pytest.mark.parametrize(
    ("old_type", "old_input", "new_type", "new_input", "shown"),
    [
        # the code now passes another value
        (AddressV2, lambda: AddressV2("main st"), AddressV2, lambda: AddressV2("elm st"), "elm"),
        # the recorded input cannot be read as the new type: a required field was added
        (
            AddressV1,
            lambda: AddressV1("main st"),
            AddressRequiredZip,
            lambda: AddressRequiredZip("main st", "1000"),
            "1000",
        ),
        # an optional field set to something other than its default
        (
            AddressV1,
            lambda: AddressV1("main st"),
            AddressV2,
            lambda: AddressV2("main st", "9"),
            "9",
        ),
    ],
)
async def test_real_input_change_parks_showing_json(
    old_type: Any, old_input: Any, new_type: Any, new_input: Any, shown: str
) -> None:
    history = await _recorded_history(_activity("vals-ship", old_type), old_input)
    new = _workflow(_activity("vals-ship", new_type), new_input)
    act = flows.replay(new, history, history[-1].at + timedelta(seconds=1))
    assert isinstance(act.park_error, flows.NonDeterminismError)
    message = str(act.park_error)
    assert '{"street":"main st"' in message  # the recorded input, as JSON text
    assert shown in message
    assert "b'" not in message


def test_activity_name_change_parks() -> None:
    scheduled = ActivityScheduled(seq=1, name="vals-old-name", input=msgspec.Raw(b'"x"'), at=T0)
    new = _workflow(_activity("vals-new-name", str), lambda: "x")
    act = flows.replay(new, [started_event("vals-evolve"), scheduled], T0)
    assert isinstance(act.park_error, flows.NonDeterminismError)
    assert "vals-old-name" in str(act.park_error)
    assert "vals-new-name" in str(act.park_error)


# -- ids given as UUIDs --


async def test_uuid_workflow_and_tenant_ids_are_their_canonical_strings() -> None:
    @flows.workflow("vals-uuid")
    async def wf(ctx: flows.WorkflowContext, _: None) -> list[str]:
        return [ctx.workflow_id, ctx.tenant_id]

    workflow_id, tenant_id = uuid.uuid4(), uuid.uuid4()
    async with TestEnvironment(workflows=[wf]) as env:
        run = await env.engine.start(wf, None, workflow_id=workflow_id, tenant_id=tenant_id)  # type: ignore[arg-type]
        assert run.workflow_id == str(workflow_id)
        assert await run.result(timeout=10) == [str(workflow_id), str(tenant_id)]
        with flows.tenant(tenant_id) as current:
            assert current == str(tenant_id)
            info = await env.engine.query(workflow_id)  # type: ignore[arg-type]
        assert info.workflow_id == str(workflow_id)
        assert info.tenant_id == str(tenant_id)
