"""Retention: deleting finished workflows in bounded batches (Engine.prune and the
Worker's background pruner)."""

from __future__ import annotations

from datetime import timedelta

from ._errors import InvalidArgument
from .store import Store

__all__ = ["prune_store"]


async def prune_store(
    store: Store, older_than: timedelta, *, batch: int = 1000, max_batches: int | None = None
) -> int:
    """``store.prune`` in batches until a batch comes back short (see ``Engine.prune``)."""
    if not isinstance(older_than, timedelta) or older_than < timedelta(0):
        raise InvalidArgument(f"older_than must be a non-negative timedelta, got {older_than!r}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise InvalidArgument(f"batch must be a positive integer, got {batch!r}")
    total = done = 0
    while max_batches is None or done < max_batches:
        deleted = await store.prune(older_than, batch)
        total += deleted
        done += 1
        if deleted < batch:
            break
    return total
