"""``flows fsck``: check a live store for broken invariants; one line per finding, a
summary, exit status 1 when anything was found."""

from __future__ import annotations

import argparse
from typing import Any

import flows_core as flows
from flows_core._fsck import FsckFinding, fsck

from ._commands import parse_age
from ._open import CliError, open_store

__all__ = ["DamageFound", "add_fsck_command", "cmd_fsck"]


class DamageFound(flows.FlowsError):
    """``flows fsck`` found broken invariants (exit status 1)."""


def add_fsck_command(sub: Any) -> None:
    """Add ``fsck`` to the ``flows`` subcommands ``sub``."""
    p = sub.add_parser(
        "fsck",
        help="check the store for broken invariants (read only); exit 1 if any is found",
        description=(
            "Reads every workflow (or those of --tenant) with its history, tasks and inbox "
            "and reports: history gaps and duplicate steps, double or unscheduled "
            "resolutions, rows that disagree with their history, tasks of finished "
            "workflows, inbox and task rows without a workflow, leases long expired with "
            "no live worker, and running workflows that wait for nothing (stuck for good)."
        ),
    )
    p.add_argument("--tenant", help="only this tenant (default: every tenant)")
    p.add_argument("--limit", type=int, help="check at most this many workflows")
    p.add_argument(
        "--lease",
        type=parse_age,
        default="30s",
        help="the workers' lease period (default 30s, Worker's default)",
    )
    p.add_argument(
        "--lease-periods",
        type=int,
        default=10,
        help="a lease expired this many lease periods ago is long expired (default 10)",
    )
    p.set_defaults(func=cmd_fsck)


def _line(finding: FsckFinding) -> None:
    print(finding.line(), flush=True)


async def cmd_fsck(args: argparse.Namespace) -> None:
    if args.limit is not None and args.limit < 1:
        raise CliError("--limit must be at least 1")
    if args.lease_periods < 1:
        raise CliError("--lease-periods must be at least 1")
    if args.lease.total_seconds() <= 0:
        raise CliError("--lease must be more than 0 seconds")
    async with open_store(args) as store:
        report = await fsck(
            store,
            tenant_id=args.tenant,
            limit=args.limit,
            lease=args.lease,
            lease_periods=args.lease_periods,
            on_finding=_line,
        )
    print(report.summary())
    if not report.ok:
        raise DamageFound(f"{len(report.findings)} findings: the store is damaged")
