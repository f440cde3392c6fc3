"""CitusStore's statements of debounced starts: PostgreSQL's (``flows_pg._sql_debounce``),
each filtered on one shard key ``%(sk)s`` so that it is a router query
(tests/citus/test_router_plans.py EXPLAINs each)."""

from __future__ import annotations

from typing import Final

from flows_pg._sql_debounce import debounce_statements

_CITUS: Final = debounce_statements(sharded=True)
DEBOUNCE_CLOSE_DUE: Final = _CITUS["DEBOUNCE_CLOSE_DUE"]
DEBOUNCE_UPSERT: Final = _CITUS["DEBOUNCE_UPSERT"]
DEBOUNCE_GET: Final = _CITUS["DEBOUNCE_GET"]
DEBOUNCE_CLAIM: Final = _CITUS["DEBOUNCE_CLAIM"]
DEBOUNCE_FINISH: Final = _CITUS["DEBOUNCE_FINISH"]
DEBOUNCE_PROBE: Final = _CITUS["DEBOUNCE_PROBE"]
DEBOUNCE_NEXT_DUE: Final = _CITUS["DEBOUNCE_NEXT_DUE"]
