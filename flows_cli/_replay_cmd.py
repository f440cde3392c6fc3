"""``flows replay`` (replay stored histories against the code about to be deployed; exit
status 1 when any does not replay) and ``flows export`` (a history as JSON, for
``flows.Replayer`` and golden tests)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import Any

import flows_core as flows

from ._app import load_app
from ._commands import parse_age
from ._open import CliError, open_store

__all__ = ["HistoriesDoNotReplay", "add_replay_commands", "cmd_export", "cmd_replay"]


class HistoriesDoNotReplay(flows.FlowsError):
    """``flows replay`` found histories the code does not replay (exit status 1)."""


def add_replay_commands(sub: Any) -> None:
    """Add ``replay`` and ``export`` to the ``flows`` subcommands ``sub``."""
    p = sub.add_parser(
        "replay",
        help="replay stored histories against the code of --app; exit 1 if any diverges",
    )
    p.add_argument("--app", required=True, help="module:attribute with workflows and activities")
    p.add_argument("--tenant", help="only this tenant (default: every tenant)")
    p.add_argument("--name", action="append", dest="names", help="only this workflow (repeatable)")
    p.add_argument(
        "--status",
        action="append",
        dest="statuses",
        choices=[s.value for s in flows.WorkflowStatus],
        help="only this status (repeatable)",
    )
    p.add_argument("--older-than", type=parse_age, help="only created at least this long ago")
    p.add_argument("--newer-than", type=parse_age, help="only created at most this long ago")
    p.add_argument("--id", action="append", dest="ids", help="only this workflow id (repeatable)")
    p.add_argument("--limit", type=int, help="at most this many histories, newest first")
    p.add_argument("--each", action="store_true", help="print a line per history replayed")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("export", help="write a workflow's history as JSON")
    p.add_argument("workflow_id")
    p.add_argument("--tenant")
    p.add_argument("-o", "--output", help="write to this file (default: standard output)")
    p.set_defaults(func=cmd_export)


def _line(result: flows.ReplayResult) -> None:
    state = "ok" if result.ok else result.problem.kind if result.problem else "?"
    print(f"· {result.tenant_id}/{result.workflow_id} {result.name} v{result.version}: {state}")


async def cmd_replay(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    app = load_app(args.app)
    async with open_store(args) as store:
        report = await flows.check_histories(
            store,
            app.workflows,
            tenant_id=args.tenant,
            names=args.names,
            statuses=args.statuses,
            older_than=args.older_than,
            newer_than=args.newer_than,
            ids=args.ids,
            limit=args.limit,
            on_result=_line if args.each else None,
        )
    print(report.text())
    if not report.ok:
        raise HistoriesDoNotReplay(
            f"{len(report.problems)} of {report.checked} histories do not replay against {args.app}"
        )


async def cmd_export(args: argparse.Namespace) -> None:
    async with open_store(args) as store:
        tenant = flows.Engine(store).tenant_for(args.tenant)
        data = await flows.export_history(store, tenant, args.workflow_id)
    if args.output:
        await asyncio.to_thread(Path(args.output).write_bytes, data)
        print(f"wrote the history of {args.workflow_id} to {args.output}", file=sys.stderr)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
