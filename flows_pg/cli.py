"""The ``flows`` command line: demo, migrate, worker, start, signal, cancel, show, list,
dead-letters, retry, rerun."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core.events import ActivityCompleted, ActivityScheduled, SignalWaitStarted, TimerStarted
from flows_core.store import ListQuery, Store

__all__ = ["main"]


class CliError(Exception):
    """An error reported as one line, without a traceback."""


# -- store selection --


def _dsn(args: argparse.Namespace) -> str | None:
    return args.dsn or os.environ.get("FLOWS_DSN") or None


@contextlib.asynccontextmanager
async def open_store(args: argparse.Namespace, *, migrate: bool = False) -> AsyncIterator[Store]:
    """The store for --dsn / FLOWS_DSN, or the embedded server's: a CitusStore when the
    schema was migrated for Citus (or, for ``migrate``, when the database runs Citus)."""
    import psycopg

    from flows_pg import PostgresStore

    dsn = _dsn(args)
    if dsn is None:
        from flows_pg import embedded

        try:
            dsn = embedded.ensure_started(args.data_dir)
        except Exception as exc:
            raise CliError(f"cannot start the embedded PostgreSQL: {exc}") from exc
        if args.verbose or args.command == "demo":
            print(f"· embedded PostgreSQL at {dsn}", file=sys.stderr)
    store: Any = PostgresStore(dsn, schema=args.schema)
    try:
        await store.open()
        if await _use_citus(store, args, migrate):
            await store.close()
            from flows_citus import CitusStore

            store = CitusStore(dsn, schema=args.schema)
            await store.open()
    except (psycopg.OperationalError, flows.StoreUnavailable) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot connect to PostgreSQL ({_redact(dsn)}): {first}") from exc
    try:
        if migrate:
            await _migrate(store, args)
        elif not await store.is_migrated():
            raise CliError(
                f"the database has no Flows schema {args.schema!r}; run `flows migrate` first"
            )
        yield store
    finally:
        await store.close()


async def _use_citus(store: Any, args: argparse.Namespace, migrate: bool) -> bool:
    """Citus if asked (--citus), or found: the Citus extension (migrate, unless
    --no-citus) or a schema migrated for Citus (every other command)."""
    if migrate and getattr(args, "citus", None) is not None:
        return bool(args.citus)
    from flows_citus import detect

    return await detect(store.pool, store.schema, migrate=migrate)


async def _migrate(store: Any, args: argparse.Namespace) -> None:
    rls = getattr(args, "rls", False)
    shards, sharding = getattr(args, "shards", None), getattr(args, "sharding", None)
    from flows_citus import CitusStore

    if isinstance(store, CitusStore):
        await store.migrate(shards=shards, sharding=sharding, rls=rls)
        print(f"Citus layout: {store.layout.shards} shard keys by {store.layout.sharding}")
        return
    if shards is not None or sharding is not None:
        raise CliError("--shards and --sharding apply to Citus only (flows migrate --citus)")
    await store.migrate(rls=rls)


def _redact(dsn: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict, make_conninfo

        parts = conninfo_to_dict(dsn)
        if "password" in parts:
            parts["password"] = "***"
        return make_conninfo(**{k: v for k, v in parts.items() if v is not None})  # type: ignore[arg-type]
    except Exception:
        return "the given DSN"


def _load_app(spec: str) -> list[Any]:
    """Definitions from ``module:attr`` (a list of workflows/activities, or a callable)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--app must look like module:attribute, got {spec!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError as exc:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from exc
    if callable(value) and not isinstance(value, flows.Workflow | flows.Activity):
        value = value()
    items = list(value) if isinstance(value, list | tuple | set) else [value]
    for item in items:
        if not isinstance(item, flows.Workflow | flows.Activity):
            raise CliError(f"{spec} must give workflows and activities, found {item!r}")
    return items


def _json(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc


# -- formatting --


def format_timeline(events: Sequence[flows.Event]) -> str:
    """History as numbered lines with time offsets from the start."""
    if not events:
        return "(no events)"
    t0 = events[0].at
    lines = []
    for position, event in enumerate(events, 1):
        offset = event.at - t0
        lines.append(f"  {position:>4}  +{_fmt_delta(offset):>9}  {flows.event_summary(event)}")
    return "\n".join(lines)


def _fmt_delta(delta: timedelta) -> str:
    seconds = delta.total_seconds()
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def format_info(info: flows.WorkflowInfo) -> str:
    lines = [
        f"workflow  {info.workflow_id}",
        f"name      {info.name} v{info.version}",
        f"tenant    {info.tenant_id}",
        f"status    {info.status.value}",
        f"created   {info.created_at.isoformat()}",
        f"updated   {info.updated_at.isoformat()}",
    ]
    if info.output is not None:
        lines.append(f"output    {json.dumps(info.output)}")
    if info.error is not None:
        lines.append(f"error     {info.error}")
        if info.error.attempts:
            lines.append(f"attempts  {info.error.attempts}")
    if info.cancel_requested:
        lines.append("cancel    requested")
    if info.waiting_reason:
        lines.append(f"waiting   {info.waiting_reason}")
    return "\n".join(lines)


# -- commands --


async def cmd_migrate(args: argparse.Namespace) -> None:
    async with open_store(args, migrate=True):
        print(f"schema {args.schema!r} is migrated")


async def cmd_worker(args: argparse.Namespace) -> None:
    items = _load_app(args.app)
    async with open_store(args) as store:
        worker = flows.Worker(
            store,
            workflows=[i for i in items if isinstance(i, flows.Workflow)],
            activities=[i for i in items if isinstance(i, flows.Activity)],
            concurrency=args.concurrency,
            poll_interval=args.poll_interval,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
        print(f"worker {worker.worker_id} serving {len(items)} definitions; Ctrl-C stops")
        await worker.run()
        print("worker stopped")


def _untyped(name: str, version: int) -> flows.Workflow[Any, Any]:
    async def body(ctx: flows.WorkflowContext, value: Any) -> Any:
        raise RuntimeError("placeholder definition, never run")

    return flows.Workflow(name, body, version=version)


async def cmd_start(args: argparse.Namespace) -> None:
    payload = _json(args.input, "--input")
    async with open_store(args) as store:
        definition: flows.Workflow[Any, Any] | str
        if args.app:
            engine = flows.Engine(
                store, workflows=[i for i in _load_app(args.app) if isinstance(i, flows.Workflow)]
            )
            definition = args.name
        else:
            engine = flows.Engine(store)
            definition = _untyped(args.name, args.version)
        run = await engine.start(
            definition,
            payload,
            tenant_id=args.tenant,
            workflow_id=args.workflow_id,
            execution_timeout=args.timeout,
        )
        print(run.workflow_id)


async def cmd_signal(args: argparse.Namespace) -> None:
    payload = _json(args.payload, "--payload")
    async with open_store(args) as store:
        await flows.Engine(store).signal(
            args.workflow_id, args.name, payload, tenant_id=args.tenant
        )
        print(f"signal {args.name!r} sent to {args.workflow_id}")


async def cmd_cancel(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        outcome = await flows.Engine(store).cancel(
            args.workflow_id, reason=args.reason, tenant_id=args.tenant
        )
        messages = {
            flows.CancelOutcome.REQUESTED: "cancellation requested",
            flows.CancelOutcome.ALREADY_REQUESTED: "cancellation was already requested",
            flows.CancelOutcome.ALREADY_FINISHED: "workflow already finished; nothing to cancel",
        }
        print(f"{args.workflow_id}: {messages[outcome]}")


async def cmd_show(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        engine = flows.Engine(store)
        info = await engine.query(args.workflow_id, tenant_id=args.tenant)
        history = await engine.history(args.workflow_id, tenant_id=args.tenant)
        print(format_info(info))
        print("history")
        print(format_timeline(history))


async def cmd_list(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        status = flows.WorkflowStatus(args.status) if args.status else None
        tenant = None if args.all_tenants else flows.Engine(store).tenant_for(args.tenant)
        records = await store.list_workflows(
            ListQuery(tenant_id=tenant, status=status, name=args.name, limit=args.limit)
        )
        if not records:
            print("no workflows")
            return
        print(f"{'workflow id':<38} {'name':<24} {'status':<10} {'tenant':<12} created")
        for r in records:
            created = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{r.workflow_id:<38} {r.name + ' v' + str(r.version):<24} "
                f"{r.status.value:<10} {r.tenant_id:<12} {created}"
            )


# -- dead letters --


async def cmd_dead_letters(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        tenant = None if args.all_tenants else flows.Engine(store).tenant_for(args.tenant)
        records = await store.list_workflows(
            ListQuery(
                tenant_id=tenant,
                status=flows.WorkflowStatus.PARKED,
                name=args.name,
                limit=args.limit,
            )
        )
        if not records:
            print("no dead letters")
            return
        print(f"{'workflow id':<38} {'name':<24} {'attempts':>8} {'tenant':<12} error")
        for r in records:
            error = r.error or flows.ErrorInfo(type="Unknown", message="")
            print(
                f"{r.workflow_id:<38} {r.name + ' v' + str(r.version):<24} "
                f"{error.attempts:>8} {r.tenant_id:<12} {_one_line(str(error))}"
            )


def _one_line(text: str, limit: int = 100) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def cmd_retry(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        await flows.Engine(store).retry(args.workflow_id, tenant_id=args.tenant)
        print(f"{args.workflow_id}: back to running; its workflow task is claimable again")


async def cmd_rerun(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        run = await flows.Engine(store).rerun(
            args.workflow_id, tenant_id=args.tenant, new_workflow_id=args.new_id
        )
        print(run.workflow_id)


async def cmd_demo(args: argparse.Namespace) -> None:
    from flows_examples.order import (
        FakeServices,
        OrderIn,
        WarehouseConfirmation,
        new_activities,
        new_workflow,
    )

    svc = FakeServices()
    acts = new_activities(svc)
    order = new_workflow(acts, ship_delay=timedelta(seconds=args.ship_delay))

    @contextlib.asynccontextmanager
    async def memory() -> AsyncIterator[Store]:
        from flows_memory import MemoryStore

        yield MemoryStore()

    ctx = memory() if args.memory else open_store(args, migrate=True)
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
        label = {
            "charge-payment": "💳 payment charged",
            "reserve-stock": "📦 stock reserved",
            "ship-order": "🚚 shipped",
        }.get(name, f"✓ {name} done")
        print(f"{label}  → {bytes(event.output).decode()}")
    elif isinstance(event, SignalWaitStarted):
        print("⏳ waiting for warehouse confirmation")
    elif isinstance(event, TimerStarted):
        print(f"⏲ durable sleep of {delay:g}s before shipping")


# -- operations: retention and stats --

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(text: str) -> timedelta:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` (or plain seconds) as a timedelta."""
    value = text.strip().lower()
    unit = value[-1:] if value[-1:] in _UNITS else "s"
    number = value[:-1] if value[-1:] in _UNITS else value
    try:
        amount = float(number)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an age: use a number and a unit, like 30d, 12h, 90m, 45s"
        ) from None
    if not amount >= 0 or amount == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: the age must be a non-negative number")
    return timedelta(seconds=amount * _UNITS[unit])


async def cmd_prune(args: argparse.Namespace) -> None:
    if args.batch < 1:
        raise CliError("--batch must be at least 1")
    async with open_store(args) as store:
        total = 0
        while True:
            deleted = await store.prune(args.older_than, args.batch)
            total += deleted
            if args.verbose and deleted:
                print(f"· deleted {deleted} (total {total})", file=sys.stderr)
            if deleted < args.batch:
                break
        print(f"pruned {total} finished workflows older than {args.older_than}")


def format_stats(stats: flows.StoreStats) -> str:
    age = stats.oldest_pending_age
    lines = [
        f"pending       {sum(stats.queue_depth.values())}",
        f"oldest        {'-' if age is None else _fmt_delta(age)}",
        f"in flight     {stats.in_flight}",
        f"dead letters  {stats.dead_letters}",
        "workflows     "
        + (", ".join(f"{k} {v}" for k, v in sorted(stats.workflows.items())) or "none"),
    ]
    if stats.queue_depth:
        lines.append("queue depth per shard")
        lines += [f"  {k:<40} {v}" for k, v in sorted(stats.queue_depth.items())]
    return "\n".join(lines)


async def cmd_stats(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        stats = await store.stats(args.shard or None)
        if args.json:
            print(
                json.dumps(
                    {
                        "queue_depth": stats.queue_depth,
                        "oldest_pending_age_seconds": None
                        if stats.oldest_pending_age is None
                        else stats.oldest_pending_age.total_seconds(),
                        "in_flight": stats.in_flight,
                        "dead_letters": stats.dead_letters,
                        "workflows": stats.workflows,
                    }
                )
            )
        else:
            print(format_stats(stats))


# -- entry point --


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flows", description="Durable workflows on PostgreSQL.")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $FLOWS_DSN, else embedded)")
    parser.add_argument("--schema", default=os.environ.get("FLOWS_SCHEMA", "flows"))
    parser.add_argument(
        "--data-dir",
        default=os.environ.get("FLOWS_DATA_DIR"),
        help="embedded PostgreSQL data directory (default .flows/pgdata)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="run the order workflow end to end")
    p.add_argument("--memory", action="store_true", help="use the in-memory store")
    p.add_argument("--ship-delay", type=float, default=2.0, help="seconds of durable sleep")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("migrate", help="create or upgrade the Flows schema")
    p.add_argument(
        "--rls",
        action="store_true",
        help="also enable row-level security per tenant (see README, Row-level security)",
    )
    p.add_argument(
        "--citus",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="distribute the schema on Citus (default: when the citus extension is there)",
    )
    p.add_argument(
        "--shards",
        type=int,
        help="Citus: number of shard keys, fixed once workflows exist (default 32)",
    )
    p.add_argument(
        "--sharding",
        choices=["workflow", "tenant"],
        help="Citus: spread by workflow id (default) or keep each tenant together",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run a worker for the definitions in --app")
    p.add_argument("--app", required=True, help="module:attribute with workflows and activities")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("start", help="start a workflow, print its id")
    p.add_argument("name")
    p.add_argument("--input", help="JSON input")
    p.add_argument("--id", dest="workflow_id")
    p.add_argument("--tenant")
    p.add_argument("--app", help="module:attribute, to validate the input against its type")
    p.add_argument("--version", type=int, default=1, help="version when --app is not given")
    p.add_argument(
        "--timeout",
        type=parse_age,
        help="execution timeout (30m, 12h, 7d...): then the workflow fails with WorkflowTimeout",
    )
    p.set_defaults(func=cmd_start)

    p = sub.add_parser("signal", help="send a signal")
    p.add_argument("workflow_id")
    p.add_argument("name")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_signal)

    p = sub.add_parser("cancel", help="request cancellation")
    p.add_argument("workflow_id")
    p.add_argument("--reason", default="")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_cancel)

    p = sub.add_parser("show", help="status, output or error, and the history timeline")
    p.add_argument("workflow_id")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("list", help="list workflows")
    p.add_argument("--status", choices=[s.value for s in flows.WorkflowStatus])
    p.add_argument("--name")
    p.add_argument("--tenant")
    p.add_argument("--all-tenants", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("dead-letters", help="list dead-lettered (parked) workflows")
    p.add_argument("--name")
    p.add_argument("--tenant")
    p.add_argument("--all-tenants", action="store_true")
    p.add_argument("--limit", type=int, default=50)
    p.set_defaults(func=cmd_dead_letters)

    p = sub.add_parser("retry", help="put a dead-lettered workflow back to running (in place)")
    p.add_argument("workflow_id")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_retry)

    p = sub.add_parser("rerun", help="start a new workflow with the same input and version")
    p.add_argument("workflow_id")
    p.add_argument("--new-id", help="id of the new workflow (default: a new UUIDv7)")
    p.add_argument("--tenant")
    p.set_defaults(func=cmd_rerun)

    p = sub.add_parser("prune", help="delete finished workflows older than an age")
    p.add_argument("--older-than", type=parse_age, required=True, help="age: 30d, 12h, 90m...")
    p.add_argument("--batch", type=int, default=1000, help="workflows per transaction")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("stats", help="queue depth, oldest pending task, in flight, dead letters")
    p.add_argument("--shard", action="append", help="only this shard key (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        asyncio.run(args.func(args))
    except CliError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except flows.FlowsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader (head, less) went away: not an error of ours
        sys.stderr.close()
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
