"""Fixtures shared by every test directory.

``pg_dsn`` (session-scoped, from tests/conftest_pg.py) lives here, once, so tests/pg and
tests/contract share one PostgreSQL server per session (a fixture imported into two
conftests would be two fixtures, and start two servers).
"""

from conftest_pg import pg_dsn

__all__ = ["pg_dsn"]
