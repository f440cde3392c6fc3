"""Flows on PostgreSQL: ``PostgresStore``, the migration runner, the embedded server helper.

::

    from flows_pg import PostgresStore

    async with PostgresStore("postgresql://...", schema="flows") as store:
        await store.migrate()
        engine = flows.Engine(store)
"""

from . import embedded
from ._migrate import check_schema, load_migrations, migrate
from ._store import PostgresStore
from ._sync import SyncClient

__all__ = ["PostgresStore", "SyncClient", "embedded", "check_schema", "load_migrations", "migrate"]
