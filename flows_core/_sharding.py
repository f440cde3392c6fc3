"""Shard keys: every row of a workflow lives under ``<workflow-name>-shard-<n>``."""

from __future__ import annotations

from typing import Protocol

from ._errors import InvalidArgument

__all__ = [
    "DEFAULT_SHARDS",
    "HashSharder",
    "Sharder",
    "TenantSharder",
    "fnv1a_32",
    "key_for",
    "shard_key",
    "shard_keys_for",
]

DEFAULT_SHARDS = 9


def fnv1a_32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes of ``text`` (as the Go original). Defined for
    every str: a lone surrogate hashes by its surrogate-escaped bytes (a store refuses
    to keep such an id, with InvalidArgument, rather than the hash failing)."""
    h = 0x811C9DC5
    for byte in text.encode("utf-8", "surrogatepass"):
        h ^= byte
        h = (h * 0x01000193) & 0xFFFFFFFF
    return h


def shard_key(workflow_name: str, shard: int) -> str:
    return f"{workflow_name}-shard-{shard}"


class Sharder(Protocol):
    """Chooses the shard of a new workflow. The stored key stays authoritative.

    The key is ``<workflow-name>-shard-<n>`` unless the sharder also has a method
    ``key_for(workflow_name, workflow_id, tenant_id) -> str`` that names it (the Citus
    layout does: its keys follow from the tenant and workflow id alone, so a lookup by
    id knows the key). See ``key_for`` below.
    """

    @property
    def shards(self) -> int:
        """How many shards new workflows are spread over."""
        ...

    def shard_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> int:
        """The shard number in ``range(self.shards)``."""
        ...


class HashSharder:
    """Default: fnv-1a 32 of the workflow id, modulo ``shards`` (9)."""

    def __init__(self, shards: int = DEFAULT_SHARDS) -> None:
        if not isinstance(shards, int) or shards < 1:
            raise InvalidArgument(f"shard count must be an integer >= 1, got {shards!r}")
        self._shards = shards

    @property
    def shards(self) -> int:
        return self._shards

    def shard_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> int:
        return fnv1a_32(workflow_id) % self._shards


class TenantSharder(HashSharder):
    """Keeps a tenant's workflows together: fnv-1a 32 of the tenant id."""

    def shard_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> int:
        return fnv1a_32(tenant_id) % self._shards


def key_for(sharder: Sharder, workflow_name: str, workflow_id: str, tenant_id: str) -> str:
    """The shard key ``sharder`` gives a new workflow."""
    custom = getattr(sharder, "key_for", None)
    if custom is not None:
        key = custom(workflow_name, workflow_id, tenant_id)
        if not isinstance(key, str) or not key:
            raise InvalidArgument(f"{type(sharder).__name__}.key_for returned {key!r}")
        return key
    return shard_key(workflow_name, sharder.shard_for(workflow_name, workflow_id, tenant_id))


class StoreSharder:
    """The placement the store imposes (Citus: its layout, known once the store has
    opened), looked up at each use; ``HashSharder()`` for a store without one. A Worker
    is made before its store opens, so it cannot read the layout then."""

    def __init__(self, store: object) -> None:
        self._store = store
        self._default = HashSharder()

    def _current(self) -> Sharder:
        imposed: Sharder | None = getattr(self._store, "sharder", None)
        return self._default if imposed is None else imposed

    @property
    def shards(self) -> int:
        return self._current().shards

    def shard_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> int:
        return self._current().shard_for(workflow_name, workflow_id, tenant_id)

    def key_for(self, workflow_name: str, workflow_id: str, tenant_id: str) -> str:
        return key_for(self._current(), workflow_name, workflow_id, tenant_id)


def shard_keys_for(workflow_names: list[str] | set[str], shards: int) -> list[str]:
    """Every shard key of ``workflow_names`` for ``shards`` shards, interleaved by shard."""
    names = sorted(workflow_names)
    return [shard_key(name, n) for n in range(shards) for name in names]
