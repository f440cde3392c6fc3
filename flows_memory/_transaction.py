"""The memory store's stand-in for a database transaction: what a transactional activity
gets as its "connection" on ``MemoryStore`` (and so in ``TestEnvironment``).

It is a STAND-IN, not a database: named tables of key -> value rows kept in the store's
process. It keeps the contract that matters to workflow tests: the function's writes and
the recording of its result commit together, or not at all (an exception, a timeout, a
lost lease or a simulated crash of the commit discards them), and two transactions that
touched the same row cannot both commit (the later one gets ``TransactionConflict`` and
runs again, as a serialization failure does on PostgreSQL). There is no SQL, no
isolation level and no constraint other than ``insert``'s unique key.
"""

from __future__ import annotations

import copy
from collections.abc import Hashable
from typing import Any

from flows_core._errors import TransactionConflict

__all__ = ["AppTables", "MemoryTransaction"]

_DELETED = object()


class AppTables:
    """The committed rows of the application's tables in a ``MemoryStore``:
    table name -> key -> value, and a version per row (for conflict checks)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Hashable, Any]] = {}
        self.versions: dict[tuple[str, Hashable], int] = {}

    def table(self, name: str) -> dict[Hashable, Any]:
        """A copy of table ``name``'s committed rows (empty if it has none)."""
        return copy.deepcopy(self.rows.get(name, {}))


class MemoryTransaction:
    """A transaction of the memory stand-in. Reads see committed rows and this
    transaction's own writes; writes are staged until the commit. Use it only inside the
    transactional activity it was given to (it refuses use once that ended)."""

    def __init__(self, tables: AppTables) -> None:
        self._tables = tables
        self._staged: dict[tuple[str, Hashable], Any] = {}
        self._seen: dict[tuple[str, Hashable], int] = {}
        self._open = True

    def _touch(self, table: str, key: Hashable) -> tuple[str, Hashable]:
        if not self._open:
            raise RuntimeError("this MemoryTransaction has ended (committed or rolled back)")
        if not isinstance(table, str):
            raise TypeError(f"table name must be a str, got {type(table).__name__}")
        at = (table, key)
        self._seen.setdefault(at, self._tables.versions.get(at, 0))
        return at

    def get(self, table: str, key: Hashable, default: Any = None) -> Any:
        """The row ``key`` of ``table`` as this transaction sees it, else ``default``."""
        at = self._touch(table, key)
        value = self._staged.get(at, self._tables.rows.get(table, {}).get(key, _DELETED))
        return default if value is _DELETED else copy.deepcopy(value)

    def insert(self, table: str, key: Hashable, value: Any) -> None:
        """Add a row; ValueError if ``key`` is taken (like a primary key violation)."""
        if self.get(table, key, _DELETED) is not _DELETED:
            raise ValueError(f"duplicate key {key!r} in table {table!r}")
        self._staged[(table, key)] = copy.deepcopy(value)

    def put(self, table: str, key: Hashable, value: Any) -> None:
        """Insert or replace the row ``key``."""
        self._staged[self._touch(table, key)] = copy.deepcopy(value)

    def delete(self, table: str, key: Hashable) -> None:
        """Remove the row ``key`` (nothing if there is none)."""
        self._staged[self._touch(table, key)] = _DELETED

    def rows(self, table: str) -> dict[Hashable, Any]:
        """Every row of ``table`` as this transaction sees it."""
        if not self._open:
            raise RuntimeError("this MemoryTransaction has ended (committed or rolled back)")
        seen = dict(self._tables.rows.get(table, {}))
        for (name, key), value in self._staged.items():
            if name == table:
                if value is _DELETED:
                    seen.pop(key, None)
                else:
                    seen[key] = value
        return copy.deepcopy(seen)

    # -- used by MemoryStore --

    def check(self) -> None:
        """TransactionConflict if a row this transaction read or wrote was committed by
        another transaction since (first-committer wins)."""
        versions = self._tables.versions
        for at, version in self._seen.items():
            if versions.get(at, 0) != version:
                raise TransactionConflict(
                    f"row {at[1]!r} of table {at[0]!r} was changed by another transaction"
                )

    def apply(self) -> None:
        """Make the staged writes the committed rows (after ``check``, in the commit)."""
        tables = self._tables
        for (table, key), value in self._staged.items():
            rows = tables.rows.setdefault(table, {})
            if value is _DELETED:
                rows.pop(key, None)
            else:
                rows[key] = value
            tables.versions[(table, key)] = tables.versions.get((table, key), 0) + 1
        self.end()

    def end(self) -> None:
        """No further use: the staged writes are committed or dropped."""
        self._open = False
        self._staged = {}
