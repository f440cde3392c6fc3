"""Flows on Citus: ``CitusStore``, every statement a single-shard router query.

::

    from flows_citus import CitusStore

    async with CitusStore("postgresql://coordinator/...", schema="flows") as store:
        await store.migrate(shards=32, sharding="workflow")   # or sharding="tenant"
        engine = flows.Engine(store)

See README.md ("Citus") for setting up a cluster, choosing the shard count and
rebalancing.
"""

from flows_core._public import publish

from ._layout import SHARDINGS, CitusLayout
from ._store import CitusStore

__all__ = ["SHARDINGS", "CitusLayout", "CitusStore"]

publish(__name__, globals(), __all__)
