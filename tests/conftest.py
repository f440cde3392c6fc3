"""Fixtures shared by every test directory.

``pg_dsn`` (session-scoped, from tests/conftest_pg.py) and ``citus_dsn`` (from
tests/conftest_citus.py) live here, once, so tests/pg, tests/citus and tests/contract
share one PostgreSQL server and one Citus cluster per session (a fixture imported into
two conftests would be two fixtures, and start two servers).
"""

from conftest_citus import citus_dsn
from conftest_pg import pg_dsn

__all__ = ["citus_dsn", "pg_dsn"]
