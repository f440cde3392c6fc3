"""The contract suite's ``adapter`` fixture (memory, PostgreSQL, Citus) for the rolling
deploy test; ``pg_dsn`` comes from tests/conftest.py."""

from tests.contract.conftest import adapter

__all__ = ["adapter"]
