"""Row-level security helpers: declare the tenant of the current transaction.

After ``migrate(..., rls=True)`` every Flows table with a ``tenant_id`` has a policy
``tenant_id = current_setting('flows.tenant_id', true)``. A role subject to it (any role
that is not the tables' owner, a superuser or BYPASSRLS) sees and writes only the rows
of the tenant declared in its transaction, and nothing when none is declared::

    with conn.transaction():
        flows_pg.set_tenant_sync(conn, "acme")
        client.start(order, OrderIn(...), tenant_id="acme", tx=conn)

The setting is transaction-local (``set_config(..., true)``, like ``SET LOCAL``): it
ends with the transaction, so a pooled connection never carries it to the next user.
It guards against queries that forget their tenant filter, not against a role that
sets another tenant on purpose: the setting is not a secret.
"""

from __future__ import annotations

from typing import Any, Final

import psycopg
from psycopg.pq import TransactionStatus

from flows_core._codec import check_id

__all__ = ["TENANT_SETTING", "set_tenant", "set_tenant_sync"]

TENANT_SETTING: Final = "flows.tenant_id"
_SET: Final = "SELECT set_config('flows.tenant_id', %s, true)"


def _check(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], tenant_id: str) -> str:
    if conn.closed:
        raise ValueError("set_tenant: the connection is closed")
    status = conn.info.transaction_status
    if status == TransactionStatus.INERROR:
        raise ValueError("set_tenant: the connection's transaction has failed")
    if conn.autocommit and status == TransactionStatus.IDLE:
        # In autocommit mode the setting would end with its own statement.
        raise ValueError(
            "set_tenant needs an open transaction: call it inside `conn.transaction()` "
            "(or on a connection that is not in autocommit mode)"
        )
    return check_id(tenant_id, "tenant id")


async def set_tenant(conn: psycopg.AsyncConnection[Any], tenant_id: str) -> None:
    """Declare ``tenant_id`` for the rest of ``conn``'s current transaction."""
    tenant = _check(conn, tenant_id)
    async with conn.cursor() as cur:
        await cur.execute(_SET, (tenant,))


def set_tenant_sync(conn: psycopg.Connection[Any], tenant_id: str) -> None:
    """``set_tenant`` for a sync ``psycopg.Connection``."""
    tenant = _check(conn, tenant_id)
    with conn.cursor() as cur:
        cur.execute(_SET, (tenant,))
