"""The current tenant: explicit ``tenant_id=`` arguments win over ``flows.tenant(...)``."""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Final
from uuid import UUID

from ._codec import check_id

__all__ = ["DEFAULT_TENANT", "current_tenant", "tenant"]

DEFAULT_TENANT: Final = "default"

_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("flows_tenant", default=None)


@contextlib.contextmanager
def tenant(tenant_id: str | UUID) -> Iterator[str]:
    """Run the block with ``tenant_id`` as the tenant of every Engine call (a UUID is
    taken as its canonical string, which the block receives)."""
    checked = check_id(tenant_id, "tenant id")
    token = _tenant.set(checked)
    try:
        yield checked
    finally:
        _tenant.reset(token)


def current_tenant() -> str | None:
    """The tenant set by the innermost ``flows.tenant()`` block, if any."""
    return _tenant.get()
