"""CitusStore's consistency scans (``flows_core.store.FsckScan``): PostgreSQL's, each
filtered on one shard key ``%(sk)s`` so that it is a router query (tests/citus checks
each with EXPLAIN, as it does every statement of ``flows_citus._sql``)."""

from __future__ import annotations

from typing import Final

from flows_pg._fsck_sql import fsck_statements

_CITUS: Final = fsck_statements(sharded=True)
FSCK_WORKFLOWS: Final = _CITUS["FSCK_WORKFLOWS"]
FSCK_ORPHAN_INBOX: Final = _CITUS["FSCK_ORPHAN_INBOX"]
FSCK_ORPHAN_TASKS: Final = _CITUS["FSCK_ORPHAN_TASKS"]
FSCK_EXPIRED_LEASES: Final = _CITUS["FSCK_EXPIRED_LEASES"]
