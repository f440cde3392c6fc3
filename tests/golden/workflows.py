"""The workflow code the golden histories were recorded with (tests/golden/*.json).

Change nothing here that changes what these workflows do: the golden test replays the
committed histories against this code, so that an event-schema change that would break
stored histories fails. New behaviour goes into a new workflow (and a new golden file,
recorded with record.py).
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

import flows_core as flows

# -- activities (deterministic: a recorded history must replay) --


class Order(msgspec.Struct, frozen=True):
    order_id: str
    amount: int


@flows.activity("golden-charge")
async def charge(order: Order) -> str:
    return f"receipt-{order.order_id}-{order.amount}"


class Declined(Exception):
    pass


@flows.activity(
    "golden-declined",
    retry=flows.RetryPolicy(max_attempts=2, initial_interval=timedelta(seconds=5), jitter=0.0),
)
async def declined(order: Order) -> str:
    raise Declined(f"card declined for {order.order_id}")


@flows.activity("golden-double")
async def double(value: int) -> int:
    return value * 2


@flows.activity("golden-refund")
async def refund(order: Order) -> str:
    return f"refund-{order.order_id}"


@flows.activity("golden-fraud-check")
async def fraud_check(order: Order) -> bool:
    return order.amount < 1000


@flows.activity("golden-ship")
async def ship(order: Order) -> str:
    return f"shipped-{order.order_id}"


ACTIVITIES = [charge, declined, double, refund, fraud_check, ship]


# -- workflows --


@flows.workflow("golden-tour")
async def tour(ctx: flows.WorkflowContext, order: Order) -> dict[str, str]:
    """One of nearly everything: activities completed and failed, a timer, side effects,
    signal waits with and without a timeout (one answered, one timed out), a patch."""
    out: dict[str, str] = {}
    out["receipt"] = await ctx.execute(charge, order)
    try:
        await ctx.execute(declined, order)
    except flows.ActivityFailed as exc:
        out["declined"] = exc.error_type
    await ctx.sleep(timedelta(minutes=10))
    out["now"] = ctx.now().isoformat()
    out["random"] = repr(ctx.random())
    out["uuid"] = str(ctx.uuid7())
    if ctx.patched("golden-tour-patch"):
        out["patched"] = "yes"
    approval = await ctx.wait_for_signal("approve", str)
    out["approval"] = approval
    note = await ctx.wait_for_signal("note", str, timeout=timedelta(hours=1))
    out["note"] = note or "none"
    late = await ctx.wait_for_signal("late", str, timeout=timedelta(minutes=5))
    out["late"] = late or "timed out"
    return out


@flows.workflow("golden-fail")
async def fail(ctx: flows.WorkflowContext, order: Order) -> str:
    """Fails: an exception that is not a code bug fails the workflow."""
    await ctx.execute(charge, order)
    raise ValueError(f"order {order.order_id} cannot be fulfilled")


@flows.workflow("golden-compensate")
async def compensate(ctx: flows.WorkflowContext, order: Order) -> str:
    """Cancelled while it sleeps; compensates and returns (cancelled with an output)."""
    await ctx.execute(charge, order)
    try:
        await ctx.sleep(timedelta(days=1))
    except flows.Cancelled:
        return await ctx.execute(refund, order)
    return "kept"


@flows.workflow("golden-cancel-plain")
async def cancel_plain(ctx: flows.WorkflowContext, order: Order) -> str:
    """Cancelled while it waits for a signal, without catching it (cancelled with an error)."""
    return await ctx.wait_for_signal("never", str)


@flows.workflow("golden-wait")
async def wait(ctx: flows.WorkflowContext, order: Order) -> str:
    """Waits for a signal until terminated from outside."""
    await ctx.execute(charge, order)
    return await ctx.wait_for_signal("never", str)


@flows.workflow("golden-deadline")
async def deadline(ctx: flows.WorkflowContext, order: Order) -> str:
    """Started with an execution_timeout it does not meet (and re-run: rerun_of)."""
    await ctx.sleep(timedelta(days=2))
    return "too late"


@flows.workflow("golden-shapes")
async def shapes(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """Race and gather shapes: a race won by an activity (the timer is dropped), a race
    lost to its timeout, a race won by a signal, a gather of steps, a gather of branches
    that fails fast, and a gather with return_exceptions."""
    out: list[str] = []
    won = await flows.race(ctx.execute(double, 21), ctx.sleep(timedelta(hours=1)))
    out.append(f"race winner {won.winner} value {won.value}")
    try:
        await flows.race(ctx.wait_for_signal("never", str), timeout=timedelta(minutes=1))
    except TimeoutError:
        out.append("race timed out")
    by_signal = await flows.race(ctx.sleep(timedelta(days=1)), ctx.wait_for_signal("go", str))
    out.append(f"race winner {by_signal.winner} value {by_signal.value}")
    pair = await flows.gather(ctx.execute(double, 1), ctx.execute(double, 2))
    out.append(f"gather {pair}")

    async def slow_branch() -> str:
        await ctx.sleep(timedelta(hours=2))
        return await ctx.execute(charge, order)

    async def failing_branch() -> str:
        await ctx.sleep(timedelta(minutes=1))
        return await ctx.execute(declined, order)

    try:
        await flows.gather(slow_branch(), failing_branch())
    except flows.ActivityFailed as exc:
        out.append(f"gather failed fast: {exc.error_type}")
    mixed = await flows.gather(
        ctx.execute(double, 5), ctx.execute(declined, order), return_exceptions=True
    )
    out.append(f"gather with exceptions: {mixed[0]}, {type(mixed[1]).__name__}")
    return out


@flows.workflow("golden-child")
async def child(ctx: flows.WorkflowContext, order: Order) -> str:
    """A child: fails on a negative amount, waits for "go" on a zero one."""
    if order.amount < 0:
        raise ValueError(f"negative amount {order.amount}")
    if order.amount == 0:
        return await ctx.wait_for_signal("go", str)
    return await ctx.execute(charge, order)


@flows.workflow("golden-family")
async def family(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """Child workflows: one completed, one failed, one signalled, one cancelled, one
    still open at the end (terminated by the parent-close policy)."""
    done = [await ctx.execute_child(child, order)]
    try:
        await ctx.execute_child(child, Order(order_id="neg", amount=-1))
    except flows.ChildWorkflowFailed as exc:
        done.append(f"failed {exc.cause.type}")
    waiting = ctx.start_child(child, Order(order_id="sig", amount=0))
    waiting.signal("go", "went")
    done.append(await waiting)
    doomed = ctx.start_child(child, Order(order_id="can", amount=0), parent_close_policy="cancel")
    doomed.cancel("not needed")
    try:
        await doomed
    except flows.ChildWorkflowCancelled as exc:
        done.append(f"cancelled {exc.workflow_id}")
    ctx.start_child(child, Order(order_id="left", amount=0), workflow_id="golden-family-left")
    return done


@flows.workflow("golden-entity")
async def entity(ctx: flows.WorkflowContext, order: Order) -> int:
    """Adds one signal to the amount per run; the first run continues as new (the
    signals it did not take go to the second run), the second returns the total."""
    added = await ctx.wait_for_signal("add", int)
    total = order.amount + added
    ctx.set_status({"run": ctx.run_number, "total": total})
    if ctx.run_number == 1:
        ctx.continue_as_new(Order(order_id=order.order_id, amount=total))
    return total


WORKFLOWS = [tour, fail, compensate, cancel_plain, wait, deadline, shapes, child, family, entity]


# -- patching: one workflow before and after ``ctx.patched("fraud-check")`` --


@flows.workflow("golden-fraud")
async def fraud_before(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """The code before the patch (the golden patch_before_*.json were recorded with it)."""
    done = [await ctx.execute(charge, order)]
    await ctx.wait_for_signal("packed", str)
    done.append(await ctx.execute(ship, order))
    await ctx.wait_for_signal("delivered", str)
    return done


@flows.workflow("golden-fraud")
async def fraud_patched(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """The same workflow (name and version) with a fraud check added by a patch."""
    done = [await ctx.execute(charge, order)]
    await ctx.wait_for_signal("packed", str)
    if ctx.patched("fraud-check"):
        ok = await ctx.execute(fraud_check, order)
        done.append(f"fraud-check {ok}")
    done.append(await ctx.execute(ship, order))
    await ctx.wait_for_signal("delivered", str)
    return done


@flows.workflow("golden-fraud")
async def fraud_deprecated(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """The patch retired: only the new path is left."""
    done = [await ctx.execute(charge, order)]
    await ctx.wait_for_signal("packed", str)
    ctx.deprecate_patch("fraud-check")
    ok = await ctx.execute(fraud_check, order)
    done.append(f"fraud-check {ok}")
    done.append(await ctx.execute(ship, order))
    await ctx.wait_for_signal("delivered", str)
    return done


@flows.workflow("golden-fraud")
async def fraud_cleaned(ctx: flows.WorkflowContext, order: Order) -> list[str]:
    """The patch call removed altogether."""
    done = [await ctx.execute(charge, order)]
    await ctx.wait_for_signal("packed", str)
    ok = await ctx.execute(fraud_check, order)
    done.append(f"fraud-check {ok}")
    done.append(await ctx.execute(ship, order))
    await ctx.wait_for_signal("delivered", str)
    return done


# ``--app`` values for the CLI tests (``tests.golden.workflows:before_app``...): one
# version of golden-fraud each.
before_app = [fraud_before, *ACTIVITIES]
patched_app = [fraud_patched, *ACTIVITIES]
deprecated_app = [fraud_deprecated, *ACTIVITIES]
