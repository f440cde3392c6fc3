"""The workflows list: filters, a keyset cursor, and paging over the store's listing.

The store protocol's ``ListQuery`` filters by tenant, status and name and pages by
offset. This module pushes down every filter ``ListQuery`` has and applies the rest
(id prefix, time range) to the rows it reads, newest first.

TODO(lead): once ``ListQuery`` gains keyset paging and the other filters, nothing here
changes: fields named ``after`` (tuple ``(created_at, workflow_id)``, rows strictly
older in the listing order), ``id_prefix``, ``created_from`` (inclusive) and
``created_to`` (exclusive) are detected on ``ListQuery`` and passed to the store; until
then the offset fallback below is used, which reads (and skips) every row before the
page and so slows down deep into a large backlog.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from flows_core import InvalidArgument
from flows_core.store import ListQuery, Store, WorkflowRecord, WorkflowStatus

__all__ = ["Cursor", "Filters", "Page", "fetch_page", "parse_filters", "store_filters"]

MAX_SCAN = 5000
"""Rows read at most for one page when filters are applied here (not by the store)."""


@dataclass(frozen=True)
class Filters:
    tenant_id: str | None = None
    status: WorkflowStatus | None = None
    name: str | None = None
    id_prefix: str | None = None
    created_from: datetime | None = None
    created_to: datetime | None = None

    def matches(self, record: WorkflowRecord) -> bool:
        """The filters the store did not apply (it may have applied some already)."""
        if self.tenant_id is not None and record.tenant_id != self.tenant_id:
            return False
        if self.status is not None and record.status != self.status:
            return False
        if self.name is not None and record.name != self.name:
            return False
        if self.id_prefix and not record.workflow_id.startswith(self.id_prefix):
            return False
        if self.created_from is not None and record.created_at < self.created_from:
            return False
        return self.created_to is None or record.created_at < self.created_to


@dataclass(frozen=True)
class Cursor:
    """Where the next page starts: after the row (created_at, workflow_id) in the
    listing order (newest first). ``offset`` is how many store rows came before it,
    for stores without keyset paging."""

    created_at: datetime
    workflow_id: str
    offset: int

    def encode(self) -> str:
        body = json.dumps([self.created_at.isoformat(), self.workflow_id, self.offset])
        return base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            body = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            at, wf_id, offset = json.loads(body)
            created = datetime.fromisoformat(at)
            if not isinstance(wf_id, str) or not isinstance(offset, int) or offset < 0:
                raise ValueError("bad cursor fields")
            if created.tzinfo is None:
                raise ValueError("cursor time has no timezone")
        except (binascii.Error, ValueError, TypeError) as exc:
            raise InvalidArgument(f"invalid page cursor {text[:60]!r}: {exc}") from None
        return cls(created, wf_id, offset)

    def key(self) -> tuple[datetime, str]:
        return (self.created_at, self.workflow_id)


@dataclass(frozen=True)
class Page:
    rows: list[WorkflowRecord]
    next_cursor: Cursor | None
    scanned: int
    """Store rows read for this page."""
    scan_cut: bool
    """True when MAX_SCAN rows were read without filling the page (``next_cursor`` then
    continues the scan)."""


def store_filters() -> frozenset[str]:
    """The optional ListQuery fields this store protocol version has."""
    return frozenset(ListQuery.__struct_fields__)


def _query(filters: Filters, cursor: Cursor | None, limit: int, offset: int) -> ListQuery:
    fields = store_filters()
    extra: dict[str, Any] = {}
    if "id_prefix" in fields:
        extra["id_prefix"] = filters.id_prefix or None
    if "created_from" in fields:
        extra["created_from"] = filters.created_from
    if "created_to" in fields:
        extra["created_to"] = filters.created_to
    if "after" in fields:
        extra["after"] = None if cursor is None else cursor.key()
        offset = 0
    return ListQuery(
        tenant_id=filters.tenant_id,
        status=filters.status,
        name=filters.name,
        limit=limit,
        offset=offset,
        **extra,
    )


async def fetch_page(
    store: Store, filters: Filters, cursor: Cursor | None, limit: int, *, max_scan: int = MAX_SCAN
) -> Page:
    """Up to ``limit`` workflows matching ``filters`` after ``cursor``, newest first."""
    if limit < 1:
        raise InvalidArgument(f"page size must be at least 1, got {limit}")
    pushed_down = {"id_prefix", "created_from", "created_to"} <= store_filters()
    batch = limit + 1 if pushed_down else max(limit + 1, min(200, max_scan))
    rows: list[tuple[WorkflowRecord, int]] = []
    offset = 0 if cursor is None else cursor.offset
    position = cursor
    scanned = 0
    while True:
        found = await store.list_workflows(_query(filters, position, batch, offset))
        older_than_range = False
        for record in found:
            offset += 1
            scanned += 1
            if cursor is not None and (record.created_at, record.workflow_id) >= cursor.key():
                continue  # shifted down by newer starts under offset paging: seen already
            if filters.created_from is not None and record.created_at < filters.created_from:
                older_than_range = True  # newest first: every later row is older still
                break
            if filters.matches(record):
                rows.append((record, offset))
                if len(rows) > limit:
                    break
        shown = [record for record, _ in rows[:limit]]
        if len(rows) > limit:
            last, last_offset = rows[limit - 1]
            return Page(
                shown, Cursor(last.created_at, last.workflow_id, last_offset), scanned, False
            )
        if older_than_range or len(found) < batch:
            return Page(shown, None, scanned, False)
        last = found[-1]
        position = Cursor(last.created_at, last.workflow_id, offset)
        if scanned >= max_scan:
            return Page(shown, position, scanned, True)


def parse_filters(
    *,
    tenant_scope: str | None,
    tenant: str | None,
    status: str | None,
    name: str | None,
    id_prefix: str | None,
    created_from: datetime | None,
    created_to: datetime | None,
) -> Filters:
    """Filters from form values (blank = none). A tenant scope overrides ``tenant``."""
    status_value = None
    if status:
        try:
            status_value = WorkflowStatus(status)
        except ValueError:
            known = ", ".join(s.value for s in WorkflowStatus)
            raise InvalidArgument(f"status {status!r} is not one of: {known}") from None
    filters = Filters(
        tenant_id=tenant or None,
        status=status_value,
        name=name or None,
        id_prefix=id_prefix or None,
        created_from=created_from,
        created_to=created_to,
    )
    if tenant_scope is not None:
        filters = replace(filters, tenant_id=tenant_scope)
    return filters
