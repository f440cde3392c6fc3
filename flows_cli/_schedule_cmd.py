"""``flows schedule create|list|show|pause|resume|trigger|delete``: durable schedules
(``Engine.schedule``); the workers fire their ticks."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

import flows_core as flows
from flows_core._schedules import info as schedule_info
from flows_core._schedules import schedule_store

from ._app import load_app, parse_json, resolve_version
from ._commands import _untyped, parse_age
from ._format import format_table, json_text
from ._open import CliError, open_store

__all__ = ["add_schedule_commands"]


def add_schedule_commands(sub: Any) -> None:
    """Add ``schedule ...`` to the ``flows`` subcommands ``sub``."""
    p = sub.add_parser("schedule", help="durable schedules: create, list, show, pause, ...")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")

    create = actions.add_parser(
        "create",
        help="create or update a schedule (cron or interval); the workers fire its ticks",
        description="Each tick starts WORKFLOW as the workflow SCHEDULE_ID@<tick, UTC>, once.",
    )
    create.add_argument("schedule_id")
    create.add_argument("workflow", help="the workflow name")
    when = create.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="a cron expression: '0 3 * * *', @hourly, @daily...")
    when.add_argument("--every", type=parse_age, help="an interval: 30s, 15m, 1h, 1d...")
    create.add_argument("--timezone", default="UTC", help="IANA name of the cron's time zone")
    create.add_argument("--jitter", type=parse_age, default=timedelta(0))
    create.add_argument(
        "--catchup-window",
        type=parse_age,
        default=timedelta(days=365),
        help="after downtime, missed ticks up to this old still fire (default 365d)",
    )
    create.add_argument(
        "--overlap", choices=[o.value for o in flows.Overlap], default=flows.Overlap.SKIP.value
    )
    create.add_argument("--input", help="JSON input of every tick's workflow")
    create.add_argument("--tenant")
    create.add_argument("--paused", action="store_true", help="create it paused")
    create.add_argument("--app", help="module:attribute, to check the name and the input type")
    create.add_argument("--version", type=int, help="workflow version (default: the highest)")
    create.add_argument(
        "--force", action="store_true", help="without --app, a name no worker serves yet"
    )
    create.set_defaults(func=cmd_schedule_create)

    listing = actions.add_parser("list", help="schedules and their next fire times")
    listing.add_argument("--tenant")
    listing.add_argument("--all-tenants", action="store_true")
    listing.add_argument("--limit", type=int, default=50)
    listing.set_defaults(func=cmd_schedule_list)

    for action, helptext, func in (
        ("show", "a schedule: spec, state, next fire times", cmd_schedule_show),
        ("pause", "stop firing ticks until resumed", cmd_schedule_pause),
        ("resume", "fire ticks again, from the next one", cmd_schedule_resume),
        ("trigger", "fire once now (a worker starts it at its next poll)", cmd_schedule_trigger),
        ("delete", "delete a schedule (its workflows go on)", cmd_schedule_delete),
    ):
        one = actions.add_parser(action, help=helptext)
        one.add_argument("schedule_id")
        one.add_argument("--tenant")
        one.set_defaults(func=func)


def _when(spec: flows.ScheduleSpec) -> str:
    if spec.cron is not None:
        return f"cron {spec.cron!r} {spec.timezone}"
    return f"every {spec.every}"


def _time(info: flows.ScheduleInfo) -> str:
    at = info.next_fire_at
    if info.paused:
        return "paused"
    return "-" if at is None else at.strftime("%Y-%m-%d %H:%M:%S")


def format_schedules(infos: Sequence[flows.ScheduleInfo]) -> str:
    """``flows schedule list``: one row per schedule."""
    rows = [
        (
            i.schedule_id,
            i.workflow_name,
            _when(i.spec),
            _time(i),
            i.last_workflow_id or "-",
            i.tenant_id,
        )
        for i in infos
    ]
    header = ("schedule id", "workflow", "when", "next fire (UTC)", "last workflow", "tenant")
    return format_table(header, rows)


def format_schedule(info: flows.ScheduleInfo) -> str:
    """``flows schedule show``."""
    spec = info.spec
    lines = [
        f"schedule  {info.schedule_id}  (tenant {info.tenant_id})",
        f"workflow  {info.workflow_name} v{info.workflow_version}",
        f"input     {json_text(info.input)}",
        f"when      {_when(spec)}",
        f"overlap   {spec.overlap.value}; jitter {spec.jitter}; catch-up {spec.catchup_window}",
        f"state     {'paused' if info.paused else 'active'}",
        f"last      {info.last_workflow_id or '-'}",
        "next fire times (UTC):",
    ]
    lines += [f"  {at:%Y-%m-%d %H:%M:%S}" for at in info.next_fire_times]
    return "\n".join(lines)


async def cmd_schedule_create(args: argparse.Namespace) -> None:
    payload = parse_json(args.input, "--input")
    spec = flows.ScheduleSpec(
        cron=args.cron,
        every=args.every,
        timezone=args.timezone,
        jitter=args.jitter,
        catchup_window=args.catchup_window,
        overlap=flows.Overlap(args.overlap),
    )
    app = load_app(args.app) if args.app else None
    async with open_store(args) as store:
        definition: flows.Workflow[Any, Any]
        if app is not None:
            versions = [wf.version for wf in app.workflows if wf.name == args.workflow]
            if not versions:
                have = ", ".join(sorted({wf.name for wf in app.workflows})) or "none"
                raise CliError(f"{args.app} has no workflow {args.workflow!r} (it has: {have})")
            definition = app.workflow(args.workflow, args.version or max(versions))
        else:
            version = await resolve_version(store, args.workflow, args.version, args.force)
            definition = _untyped(args.workflow, version)
        info = await flows.Engine(store).schedule(
            args.schedule_id,
            definition,
            payload,
            spec=spec,
            tenant_id=args.tenant,
            paused=args.paused,
        )
        print(format_schedule(info))


async def cmd_schedule_list(args: argparse.Namespace) -> None:
    if args.limit < 0:
        raise CliError("--limit must be at least 0")
    async with open_store(args) as store:
        if args.all_tenants:
            rows = await schedule_store(store).list_schedules(None, after=None, limit=args.limit)
            infos = [schedule_info(row) for row in rows]
        else:
            infos = await flows.Engine(store).list_schedules(
                tenant_id=args.tenant, limit=args.limit
            )
        print(format_schedules(infos))


async def cmd_schedule_show(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        info = await flows.Engine(store).get_schedule(args.schedule_id, tenant_id=args.tenant)
        print(format_schedule(info))


async def cmd_schedule_pause(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        await flows.Engine(store).pause_schedule(args.schedule_id, tenant_id=args.tenant)
        print(f"schedule {args.schedule_id!r} paused")


async def cmd_schedule_resume(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        info = await flows.Engine(store).resume_schedule(args.schedule_id, tenant_id=args.tenant)
        print(f"schedule {args.schedule_id!r} resumed; next fire {_time(info)} UTC")


async def cmd_schedule_trigger(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        workflow_id = await flows.Engine(store).trigger_schedule(
            args.schedule_id, tenant_id=args.tenant
        )
        print(workflow_id)


async def cmd_schedule_delete(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        await flows.Engine(store).delete_schedule(args.schedule_id, tenant_id=args.tenant)
        print(f"schedule {args.schedule_id!r} deleted")
