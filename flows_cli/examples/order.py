"""The order workflow of the original flows README, typed (what ``flows demo`` runs).

Charge the card, reserve stock, wait for the warehouse to confirm, wait an hour, ship.
A failed reservation refunds the payment (a saga), and so does a cancellation.

``definitions`` serves it to a worker::

    flows worker --app flows_cli.examples.order:definitions
    flows start order-workflow --app flows_cli.examples.order:definitions \
        --input '{"customer_id": "c-1", "items": ["book"], "total": 4200}'
    flows signal ID warehouse-ready --app flows_cli.examples.order:definitions \
        --payload '{"warehouse": "berlin-1"}'
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, NamedTuple

import msgspec

import flows_core as flows


class OrderIn(msgspec.Struct):
    customer_id: str
    items: list[str]
    total: int


class ChargeIn(msgspec.Struct):
    customer_id: str
    amount: int


class ChargeOut(msgspec.Struct):
    success: bool
    charge_id: str


class ReserveIn(msgspec.Struct):
    order_id: str
    items: list[str]


class RefundIn(msgspec.Struct):
    charge_id: str
    amount: int


class WarehouseConfirmation(msgspec.Struct):
    warehouse: str
    ready: bool = True


class ShipIn(msgspec.Struct):
    order_id: str
    warehouse: str


class OrderOut(msgspec.Struct):
    order_id: str
    status: str
    charge_id: str = ""
    tracking: str = ""


@dataclass
class FakeServices:
    """Stand-ins for payment, inventory and shipping services (they record calls)."""

    calls: list[str] = field(default_factory=list)
    out_of_stock: set[str] = field(default_factory=set)
    declined: set[str] = field(default_factory=set)


class OrderActivities(NamedTuple):
    charge: flows.Activity[ChargeIn, ChargeOut]
    reserve: flows.Activity[ReserveIn, bool]
    refund: flows.Activity[RefundIn, None]
    ship: flows.Activity[ShipIn, str]


def new_activities(svc: FakeServices) -> OrderActivities:
    """The order's activities, closing over their services (dependency injection)."""

    @flows.activity("charge-payment", retry=flows.RetryPolicy(max_attempts=5))
    async def charge_payment(inp: ChargeIn) -> ChargeOut:
        svc.calls.append(f"charge {inp.customer_id} {inp.amount}")
        ok = inp.customer_id not in svc.declined
        return ChargeOut(success=ok, charge_id=f"ch-{inp.customer_id}-{inp.amount}")

    @flows.activity("reserve-stock", retry=flows.RetryPolicy(max_attempts=3))
    def reserve_stock(inp: ReserveIn) -> bool:
        svc.calls.append(f"reserve {inp.order_id}")
        missing = [i for i in inp.items if i in svc.out_of_stock]
        if missing:
            raise flows.TerminalError(f"out of stock: {', '.join(missing)}")
        return True

    @flows.activity("refund-payment")
    async def refund_payment(inp: RefundIn) -> None:
        svc.calls.append(f"refund {inp.charge_id} {inp.amount}")

    @flows.activity("ship-order")
    async def ship_order(inp: ShipIn) -> str:
        svc.calls.append(f"ship {inp.order_id} from {inp.warehouse}")
        return f"track-{inp.order_id[:8]}"

    return OrderActivities(charge_payment, reserve_stock, refund_payment, ship_order)


def new_workflow(
    acts: OrderActivities, *, ship_delay: timedelta = timedelta(hours=1)
) -> flows.Workflow[OrderIn, OrderOut]:
    """The order workflow; ``ship_delay`` is the durable wait before shipping."""
    charge, reserve, refund, ship = acts

    @flows.workflow("order-workflow", version=1)
    async def order(ctx: flows.WorkflowContext, inp: OrderIn) -> OrderOut:
        order_id = str(ctx.uuid7())
        paid = await ctx.execute(charge, ChargeIn(customer_id=inp.customer_id, amount=inp.total))
        if not paid.success:
            return OrderOut(order_id=order_id, status="payment-declined")
        try:
            await ctx.execute(reserve, ReserveIn(order_id=order_id, items=inp.items))
            confirmation = await ctx.wait_for_signal("warehouse-ready", WarehouseConfirmation)
            await ctx.sleep(ship_delay)
        except (flows.ActivityFailed, flows.Cancelled):
            await ctx.execute(refund, RefundIn(charge_id=paid.charge_id, amount=inp.total))
            if ctx.cancel_requested:
                raise
            return OrderOut(order_id=order_id, status="refunded", charge_id=paid.charge_id)
        tracking = await ctx.execute(
            ship, ShipIn(order_id=order_id, warehouse=confirmation.warehouse)
        )
        return OrderOut(
            order_id=order_id, status="shipped", charge_id=paid.charge_id, tracking=tracking
        )

    return order


WALKTHROUGH_SHIP_DELAY = timedelta(seconds=10)
"""The durable sleep before shipping in ``definitions`` (an hour would be a long wait)."""


def definitions() -> list[flows.Workflow[Any, Any] | flows.Activity[Any, Any]]:
    """The order workflow (shipping 10 s after the warehouse confirms) and its activities
    on fake services, for ``flows worker --app flows_cli.examples.order:definitions``."""
    acts = new_activities(FakeServices())
    return [new_workflow(acts, ship_delay=WALKTHROUGH_SHIP_DELAY), *acts]
