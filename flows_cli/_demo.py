"""``flows demo``: the order workflow end to end, narrated as it happens."""

from __future__ import annotations

import argparse
import asyncio
from datetime import timedelta

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityScheduled, SignalWaitStarted, TimerStarted

from ._format import format_timeline, json_text
from ._open import memory_store, open_store

__all__ = ["cmd_demo"]

_LABELS = {
    "charge-payment": "💳 payment charged",
    "reserve-stock": "📦 stock reserved",
    "ship-order": "🚚 shipped",
}


async def cmd_demo(args: argparse.Namespace) -> None:
    """Run the order workflow with a worker in this process, sending the warehouse's
    signal when the workflow waits for it."""
    from .examples.order import (
        FakeServices,
        OrderIn,
        WarehouseConfirmation,
        new_activities,
        new_workflow,
    )

    acts = new_activities(FakeServices())
    order = new_workflow(acts, ship_delay=timedelta(seconds=args.ship_delay))
    ctx = memory_store() if args.memory else open_store(args, migrate=True)
    async with ctx as store:
        engine = flows.Engine(store, workflows=[order])
        worker = flows.Worker(store, workflows=[order], activities=list(acts), poll_interval=0.2)
        worker_task = asyncio.ensure_future(worker.run())
        try:
            run = await engine.start(
                order, OrderIn(customer_id="cust-42", items=["book"], total=4200)
            )
            print(f"▶ started order-workflow {run.workflow_id}")
            seen = 0
            signalled = False
            while True:
                history = await engine.history(run.workflow_id)
                for event in history[seen:]:
                    _print_progress(event, history, args.ship_delay)
                seen = len(history)
                if not signalled and any(isinstance(e, SignalWaitStarted) for e in history):
                    await asyncio.sleep(0.3)
                    await engine.signal(
                        run.workflow_id,
                        "warehouse-ready",
                        WarehouseConfirmation(warehouse="berlin-1"),
                    )
                    print("✉ signal 'warehouse-ready' sent (warehouse berlin-1)")
                    signalled = True
                info = await engine.query(run.workflow_id)
                if info.finished:
                    break
                await store.wait_for_workflow(info.tenant_id, run.workflow_id, 1.0)
            out = await run.result()
            print(f"✔ {out.status}: order {out.order_id}, tracking {out.tracking}")
            print("history timeline")
            print(format_timeline(await engine.history(run.workflow_id)))
            if not args.memory:
                print(f"(stored in PostgreSQL: `flows show {run.workflow_id}` shows it again)")
        finally:
            await worker.stop()
            await worker_task


def _print_progress(event: flows.Event, history: list[flows.Event], delay: float) -> None:
    if isinstance(event, ActivityCompleted):
        names = {e.seq: e.name for e in history if isinstance(e, ActivityScheduled)}
        name = names.get(event.seq, "activity")
        print(f"{_LABELS.get(name, f'✓ {name} done')}  → {json_text(event.output)}")
    elif isinstance(event, SignalWaitStarted):
        print("⏳ waiting for warehouse confirmation")
    elif isinstance(event, TimerStarted):
        print(f"⏲ durable sleep of {delay:g}s before shipping")
