"""Flows on Citus: ``CitusStore`` and ``SyncClient``, every statement a single-shard
router query; ``detect`` tells a Citus schema (or database) from a PostgreSQL one.

::

    from flows_citus import CitusStore

    async with CitusStore("postgresql://coordinator/...", schema="flows") as store:
        await store.migrate(shards=32, sharding="workflow")   # or sharding="tenant"
        engine = flows.Engine(store)

See README.md ("Citus") for setting up a cluster, choosing the shard count and
rebalancing.
"""

from flows_core._public import publish

from ._detect import detect, detect_sync
from ._layout import SHARDINGS, CitusLayout
from ._store import CitusStore
from ._sync import SyncClient

__all__ = ["SHARDINGS", "CitusLayout", "CitusStore", "SyncClient", "detect", "detect_sync"]

publish(__name__, globals(), __all__)
