"""The ``flows`` argument parser and entry point: every error is one line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import flows_core as flows

from . import _commands as c
from ._demo import cmd_demo
from ._fsck_cmd import add_fsck_command
from ._open import CliError
from ._operate import cmd_ui
from ._replay_cmd import add_replay_commands
from ._schedule_cmd import add_schedule_commands

__all__ = ["build_parser", "main"]


def _id_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("workflow_id")
    p.add_argument("--tenant")


def _listing_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name")
    p.add_argument("--tenant")
    p.add_argument("--all-tenants", action="store_true")
    p.add_argument("--limit", type=int, default=50)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535)")
    return port


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command; each sets ``func``, the coroutine that runs it."""
    parser = argparse.ArgumentParser(prog="flows", description="Durable workflows on PostgreSQL.")
    parser.add_argument("--dsn", help="PostgreSQL DSN (default: $FLOWS_DSN, else the embedded one)")
    parser.add_argument("--schema", default=os.environ.get("FLOWS_SCHEMA", "flows"))
    parser.add_argument(
        "--data-dir",
        help="the embedded PostgreSQL's data directory (default: $FLOWS_DATA_DIR, else "
        "flows/pgdata in your user data directory; `flows embedded status` shows it)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

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
        "--shards", type=int, help="Citus: number of shard keys, fixed once workflows exist"
    )
    p.add_argument(
        "--sharding",
        choices=["workflow", "tenant"],
        help="Citus: spread by workflow id (default) or keep each tenant together",
    )
    p.set_defaults(func=c.cmd_migrate)

    p = sub.add_parser("worker", help="run a worker for the definitions in --app")
    p.add_argument("--app", required=True, help="module:attribute with workflows and activities")
    p.add_argument("--concurrency", type=int, default=10)
    p.add_argument("--poll-interval", type=float, default=1.0)
    p.add_argument(
        "--metrics-port",
        type=_port,
        help="serve Prometheus metrics at http://HOST:PORT/metrics (needs flows[prometheus])",
    )
    p.add_argument(
        "--metrics-host",
        default="127.0.0.1",
        help="address of the metrics endpoint (default: 127.0.0.1, loopback only)",
    )
    p.add_argument(
        "--otel",
        action="store_true",
        help="trace with OpenTelemetry on the global tracer provider (needs flows[otel]; "
        "configure the SDK, e.g. run under opentelemetry-instrument)",
    )
    p.set_defaults(func=c.cmd_worker)

    p = sub.add_parser(
        "ui",
        help="serve the web dashboard (and /metrics)",
        description="Serve the web dashboard (and /metrics with flows[prometheus]). "
        "Credentials come from the environment: FLOWS_UI_TOKEN (a bearer token), "
        "FLOWS_UI_BASIC_AUTH (user:password), FLOWS_UI_SECRET_KEY (signs sessions).",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="default 127.0.0.1; any other needs FLOWS_UI_TOKEN or FLOWS_UI_BASIC_AUTH",
    )
    p.add_argument("--port", type=_port, default=8080)
    p.add_argument("--read-only", action="store_true", help="no actions, only looking")
    p.add_argument("--tenant", help="show this tenant only")
    p.add_argument("--app", help="module:attribute, to check signal payloads against their types")
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("start", help="start a workflow, print its id")
    p.add_argument("name")
    p.add_argument("--input", help="JSON input")
    p.add_argument("--id", dest="workflow_id")
    p.add_argument("--tenant")
    p.add_argument("--app", help="module:attribute, to check the name and the input type")
    p.add_argument("--version", type=int, help="workflow version (default: the highest one known)")
    p.add_argument(
        "--force",
        action="store_true",
        help="without --app, start a name that no worker serves and that was never started",
    )
    p.add_argument(
        "--timeout",
        type=c.parse_age,
        help="execution timeout (30m, 12h, 7d...): then the workflow fails with WorkflowTimeout",
    )
    p.set_defaults(func=c.cmd_start)

    p = sub.add_parser("signal", help="send a signal")
    _id_options(p)
    p.add_argument("name")
    p.add_argument("--payload", help="JSON payload")
    p.add_argument("--app", help="module:attribute, to check the payload against the type")
    p.set_defaults(func=c.cmd_signal)

    p = sub.add_parser("cancel", help="request cancellation (the workflow may compensate)")
    _id_options(p)
    p.add_argument("--reason", default="")
    p.set_defaults(func=c.cmd_cancel)

    p = sub.add_parser("terminate", help="end a workflow at once, without compensation")
    _id_options(p)
    p.add_argument("--reason", default="")
    p.set_defaults(func=c.cmd_terminate)

    p = sub.add_parser("show", help="status, output or error, and the history timeline")
    _id_options(p)
    p.add_argument(
        "--run", type=int, help="the history of this run (continue-as-new; see `flows runs`)"
    )
    p.set_defaults(func=c.cmd_show)

    p = sub.add_parser("runs", help="the runs of a workflow id (continue-as-new)")
    _id_options(p)
    p.set_defaults(func=c.cmd_runs)

    p = sub.add_parser("list", help="list workflows")
    p.add_argument("--status", choices=[s.value for s in flows.WorkflowStatus])
    _listing_options(p)
    p.set_defaults(func=c.cmd_list)

    p = sub.add_parser("dead-letters", help="list dead-lettered (parked) workflows")
    _listing_options(p)
    p.set_defaults(func=c.cmd_dead_letters)

    p = sub.add_parser("retry", help="put a dead-lettered workflow back to running (in place)")
    _id_options(p)
    p.set_defaults(func=c.cmd_retry)

    p = sub.add_parser("rerun", help="start a new workflow with the same input and version")
    _id_options(p)
    p.add_argument("--new-id", help="id of the new workflow (default: a new UUIDv7)")
    p.set_defaults(func=c.cmd_rerun)

    p = sub.add_parser("prune", help="delete finished workflows older than an age")
    p.add_argument("--older-than", type=c.parse_age, required=True, help="age: 30d, 12h, 90m...")
    p.add_argument("--batch", type=int, default=1000, help="workflows per transaction")
    p.set_defaults(func=c.cmd_prune)

    p = sub.add_parser("stats", help="queue depth, oldest pending task, in flight, dead letters")
    p.add_argument("--shard", action="append", help="only this shard key (repeatable)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=c.cmd_stats)

    p = sub.add_parser("embedded", help="the embedded PostgreSQL: status, start, dsn, stop")
    actions = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    actions.add_parser("status", help="its data directory, and whether it runs").set_defaults(
        func=c.cmd_embedded_status
    )
    actions.add_parser("start", help="start it (if needed) and print its DSN").set_defaults(
        func=c.cmd_embedded_start
    )
    actions.add_parser("dsn", help="print the DSN of the running server").set_defaults(
        func=c.cmd_embedded_dsn
    )
    stop = actions.add_parser("stop", help="stop it (it keeps running until then)")
    stop.add_argument("--delete", action="store_true", help="also delete its data directory")
    stop.set_defaults(func=c.cmd_embedded_stop)

    add_replay_commands(sub)
    add_fsck_command(sub)
    add_schedule_commands(sub)
    return parser


def _database_error(exc: BaseException) -> bool:
    """A psycopg error that reached us (imported lazily: psycopg is optional)."""
    psycopg = sys.modules.get("psycopg")
    return psycopg is not None and isinstance(exc, psycopg.Error)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``flows`` with ``argv`` (default: the command line); returns the exit status."""
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
    except Exception as exc:
        if not _database_error(exc):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"error: database: {type(exc).__name__}: {first}", file=sys.stderr)
        return 1
    return 0
