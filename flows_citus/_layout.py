"""Where workflows live on Citus: shard keys that follow from (tenant, workflow id).

On PostgreSQL a workflow's shard key is ``<name>-shard-<n>`` and a lookup by id reads an
index on (tenant_id, workflow_id). On Citus that lookup would visit every shard, and
(tenant_id, workflow_id) cannot even be kept unique, because Citus only enforces unique
keys that contain the distribution column. So on Citus the key is ``shard-<n>``, with
``n`` a hash of the workflow id (``sharding="workflow"``, the default: load spreads over
every shard) or of the tenant id (``sharding="tenant"``: a tenant's workflows stay
together). Anyone who knows (tenant, id) knows the key: every statement is then a
router query on one shard, and the primary key (shard_key, tenant_id, workflow_id)
keeps ids unique per tenant.
"""

from __future__ import annotations

from typing import Final, Literal

from flows_core._errors import InvalidArgument
from flows_core._sharding import fnv1a_32

__all__ = ["SHARDINGS", "CitusLayout", "Sharding"]

Sharding = Literal["workflow", "tenant"]
SHARDINGS: Final = ("workflow", "tenant")
MAX_SHARDS: Final = 4096


class CitusLayout:
    """``shards`` shard keys ``shard-0`` .. ``shard-<shards-1>``; a Sharder for Engine."""

    def __init__(self, shards: int = 32, sharding: str = "workflow") -> None:
        if not isinstance(shards, int) or isinstance(shards, bool) or not 1 <= shards <= MAX_SHARDS:
            raise InvalidArgument(f"shards must be an integer in 1..{MAX_SHARDS}, got {shards!r}")
        if sharding not in SHARDINGS:
            raise InvalidArgument(f"sharding must be 'workflow' or 'tenant', got {sharding!r}")
        self._shards = shards
        self.sharding: Sharding = "tenant" if sharding == "tenant" else "workflow"
        self.keys: tuple[str, ...] = tuple(f"shard-{n}" for n in range(shards))

    @property
    def shards(self) -> int:
        return self._shards

    def shard_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> int:
        """The shard number of a workflow (its name plays no part)."""
        basis = tenant_id if self.sharding == "tenant" else workflow_id
        return fnv1a_32(basis) % self._shards

    def key_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> str:
        """The shard key of a workflow."""
        return self.keys[self.shard_for(workflow_name, workflow_id, tenant_id)]

    def locate(self, tenant_id: str, workflow_id: str) -> str:
        """The shard key of the workflow ``workflow_id`` of ``tenant_id``."""
        return self.key_for("", workflow_id, tenant_id)

    def tenant_keys(self, tenant_id: str | None) -> tuple[str, ...]:
        """The keys that can hold ``tenant_id``'s workflows (all keys for None)."""
        if tenant_id is not None and self.sharding == "tenant":
            return (self.keys[fnv1a_32(tenant_id) % self._shards],)
        return self.keys

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, CitusLayout)
            and other.shards == self.shards
            and other.sharding == self.sharding
        )

    def __hash__(self) -> int:
        return hash((self._shards, self.sharding))

    def __repr__(self) -> str:
        return f"CitusLayout(shards={self._shards}, sharding={self.sharding!r})"
