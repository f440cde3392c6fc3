"""The workflow of the upgrade tests, written only with API that both the previous release
(commit 2a2af42) and today's code offer, so one module runs under either.

``order``: an activity, a durable timer, a signal wait, a second activity. Its output
names every step, so a finished run shows it took them all once.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec

import flows_core as flows

NAME = "upgrade-order"
SIGNAL = "approve"


class OrderIn(msgspec.Struct):
    order_id: str
    delay: float
    """Seconds of the durable timer."""


@flows.activity("upgrade-charge")
async def charge(order_id: str) -> str:
    return f"charged-{order_id}"


@flows.activity("upgrade-ship")
async def ship(order_id: str) -> str:
    return f"shipped-{order_id}"


@flows.workflow(NAME, version=1)
async def order(ctx: flows.WorkflowContext, inp: OrderIn) -> str:
    charged = await ctx.execute(charge, inp.order_id)
    await ctx.sleep(timedelta(seconds=inp.delay))
    approval = await ctx.wait_for_signal(SIGNAL, str)
    shipped = await ctx.execute(ship, inp.order_id)
    return f"{charged}/{approval}/{shipped}"


def approval_for(order_id: str) -> str:
    return f"ok-{order_id}"


def expected_output(order_id: str) -> str:
    return f"charged-{order_id}/{approval_for(order_id)}/shipped-{order_id}"


WORKFLOWS = [order]
ACTIVITIES = [charge, ship]
