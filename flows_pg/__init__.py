"""Flows on PostgreSQL: ``PostgresStore``, ``SyncClient``, the migration runner, the
embedded server helper.

::

    from flows_pg import PostgresStore

    async with PostgresStore("postgresql://...", schema="flows") as store:
        await store.migrate()
        engine = flows.Engine(store)
"""

from flows_core._public import publish

from . import embedded
from ._migrate import check_schema, load_migrations, migrate
from ._rls import TENANT_SETTING, set_tenant, set_tenant_sync
from ._store import PostgresStore
from ._sync import SyncClient

__all__ = [
    "TENANT_SETTING",
    "PostgresStore",
    "SyncClient",
    "embedded",
    "check_schema",
    "load_migrations",
    "migrate",
    "set_tenant",
    "set_tenant_sync",
]

publish(__name__, globals(), __all__)
