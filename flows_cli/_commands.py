"""The commands on workflows (migrate, worker, start, signal, cancel, terminate, show,
list, dead-letters, retry, rerun, prune, stats) and on the embedded server."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core._limits import limit_usage
from flows_core.store import ListQuery

from ._app import check_signal, load_app, parse_json, resolve_version
from ._format import (
    format_dead_letters,
    format_info,
    format_limits,
    format_runs,
    format_stats,
    format_timeline,
    format_workflows,
    json_text,
    limits_json,
    stats_json,
)
from ._open import CliError, embedded_server, open_store, start_embedded
from ._operate import metrics_server, worker_observer

__all__ = [
    "cmd_cancel",
    "cmd_dead_letters",
    "cmd_embedded_dsn",
    "cmd_embedded_start",
    "cmd_embedded_status",
    "cmd_embedded_stop",
    "cmd_list",
    "cmd_migrate",
    "cmd_prune",
    "cmd_rerun",
    "cmd_retry",
    "cmd_runs",
    "cmd_show",
    "cmd_signal",
    "cmd_start",
    "cmd_stats",
    "cmd_terminate",
    "cmd_worker",
    "parse_age",
]


async def cmd_migrate(args: argparse.Namespace) -> None:
    async with open_store(args, migrate=True):
        print(f"schema {args.schema!r} is migrated")


async def cmd_worker(args: argparse.Namespace) -> None:
    app = load_app(args.app)
    observer = worker_observer(args)
    async with open_store(args) as store:
        worker = flows.Worker(
            store,
            workflows=app.workflows,
            activities=app.activities,
            concurrency=args.concurrency,
            poll_interval=args.poll_interval,
            observer=observer,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
        served = ", ".join(f"{wf.name} v{wf.version}" for wf in app.workflows) or "no workflow"
        with metrics_server(args):
            print(
                f"worker {worker.worker_id} serving {served} and {len(app.activities)} "
                "activities; Ctrl-C stops",
                flush=True,
            )
            await worker.run()
        print("worker stopped")


def _untyped(name: str, version: int) -> flows.Workflow[Any, Any]:
    """A stand-in definition to start ``name`` by name and version, without its code."""

    async def body(ctx: flows.WorkflowContext, value: Any) -> Any:
        raise RuntimeError("stand-in definition of `flows start`, never run")

    return flows.Workflow(name, body, version=version)


async def cmd_start(args: argparse.Namespace) -> None:
    payload = parse_json(args.input, "--input")
    app = load_app(args.app) if args.app else None
    async with open_store(args) as store:
        definition: flows.Workflow[Any, Any]
        if app is not None:
            versions = [wf.version for wf in app.workflows if wf.name == args.name]
            if not versions:
                have = ", ".join(sorted({wf.name for wf in app.workflows})) or "none"
                raise CliError(f"{args.app} has no workflow {args.name!r} (it has: {have})")
            definition = app.workflow(args.name, args.version or max(versions))
        else:
            version = await resolve_version(store, args.name, args.version, args.force)
            definition = _untyped(args.name, version)
        run = await flows.Engine(store).start(
            definition,
            payload,
            tenant_id=args.tenant,
            workflow_id=args.workflow_id,
            execution_timeout=args.timeout,
        )
        print(run.workflow_id)


async def cmd_signal(args: argparse.Namespace) -> None:
    payload = parse_json(args.payload, "--payload")
    app = load_app(args.app) if args.app else None
    async with open_store(args) as store:
        engine = flows.Engine(store)
        if app is not None:
            tenant = engine.tenant_for(args.tenant)
            note = await check_signal(store, app, tenant, args.workflow_id, args.name, payload)
            if note:
                print(f"· {note}", file=sys.stderr)
        await engine.signal(args.workflow_id, args.name, payload, tenant_id=args.tenant)
        shown = "" if args.payload is None else f" with payload {json_text(payload)}"
        print(f"signal {args.name!r} sent to {args.workflow_id}{shown}")


_CANCEL_MESSAGES = {
    flows.CancelOutcome.REQUESTED: "cancellation requested",
    flows.CancelOutcome.ALREADY_REQUESTED: "cancellation was already requested",
    flows.CancelOutcome.ALREADY_FINISHED: "workflow already finished; nothing to cancel",
    flows.CancelOutcome.CANCELLED: "cancelled (it was dead-lettered, so it ended at once)",
}


async def cmd_cancel(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        outcome = await flows.Engine(store).cancel(
            args.workflow_id, reason=args.reason, tenant_id=args.tenant
        )
        print(f"{args.workflow_id}: {_CANCEL_MESSAGES[outcome]}")


async def cmd_terminate(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        outcome = await flows.Engine(store).terminate(
            args.workflow_id, reason=args.reason, tenant_id=args.tenant
        )
        if outcome == flows.TerminateOutcome.ALREADY_FINISHED:
            print(f"{args.workflow_id}: workflow already finished; nothing to terminate")
        else:
            print(f"{args.workflow_id}: terminated; its pending steps were dropped")


async def cmd_show(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        engine = flows.Engine(store)
        info = await engine.query(args.workflow_id, tenant_id=args.tenant)
        run = getattr(args, "run", None)
        history = await engine.history(args.workflow_id, tenant_id=args.tenant, run_number=run)
        print(format_info(info))
        print("history" if run is None else f"history of run {run}")
        print(format_timeline(history))


async def cmd_runs(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        engine = flows.Engine(store)
        print(format_runs(await engine.runs(args.workflow_id, tenant_id=args.tenant)))


async def cmd_list(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        status = flows.WorkflowStatus(args.status) if args.status else None
        tenant = None if args.all_tenants else flows.Engine(store).tenant_for(args.tenant)
        records = await store.list_workflows(
            ListQuery(tenant_id=tenant, status=status, name=args.name, limit=args.limit)
        )
        print(format_workflows(records) if records else "no workflows")


async def cmd_dead_letters(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        tenant = None if args.all_tenants else flows.Engine(store).tenant_for(args.tenant)
        query = ListQuery(
            tenant_id=tenant, status=flows.WorkflowStatus.PARKED, name=args.name, limit=args.limit
        )
        records = await store.list_workflows(query)
        print(format_dead_letters(records) if records else "no dead letters")


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


async def cmd_stats(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        stats = await store.stats(args.shard or None)
        usage = await limit_usage(store)
        if args.json:
            print(json.dumps({**json.loads(stats_json(stats)), "limits": limits_json(usage)}))
            return
        limits = format_limits(usage, store.clock.now())
        print(format_stats(stats) + ("\n" + limits if limits else ""))


# -- the embedded server --


async def cmd_embedded_status(args: argparse.Namespace) -> None:
    embedded, data_dir = embedded_server(args)
    print(f"data directory  {data_dir}")
    dsn = embedded.dsn(data_dir)
    if dsn is not None:
        print(f"status          running (until `flows embedded stop`)\ndsn             {dsn}")
    elif (data_dir / "PG_VERSION").exists():
        print("status          stopped (any flows command starts it again)")
    else:
        print("status          not created (the first flows command creates and starts it)")


async def cmd_embedded_start(args: argparse.Namespace) -> None:
    print(start_embedded(args))


async def cmd_embedded_dsn(args: argparse.Namespace) -> None:
    embedded, data_dir = embedded_server(args)
    dsn = embedded.dsn(data_dir)
    if dsn is None:
        raise CliError(f"no embedded PostgreSQL runs in {data_dir}; `flows embedded start`")
    print(dsn)


async def cmd_embedded_stop(args: argparse.Namespace) -> None:
    embedded, data_dir = embedded_server(args)
    was_running = embedded.stop(data_dir, delete=args.delete)
    state = "stopped" if was_running else "was not running"
    deleted = "; its data directory was deleted" if args.delete else ""
    print(f"embedded PostgreSQL in {data_dir}: {state}{deleted}")
