"""CitusStore's statements of durable schedules: PostgreSQL's (``flows_pg._sql_schedules``),
each filtered on one shard key ``%(sk)s`` so that it is a router query
(tests/citus/test_router_plans.py EXPLAINs each)."""

from __future__ import annotations

from typing import Final

from flows_pg._sql_schedules import schedule_statements

_CITUS: Final = schedule_statements(sharded=True)
SCHEDULE_INSERT: Final = _CITUS["SCHEDULE_INSERT"]
SCHEDULE_UPDATE: Final = _CITUS["SCHEDULE_UPDATE"]
SCHEDULE_GET: Final = _CITUS["SCHEDULE_GET"]
SCHEDULE_LIST: Final = _CITUS["SCHEDULE_LIST"]
SCHEDULE_DELETE: Final = _CITUS["SCHEDULE_DELETE"]
SCHEDULE_CLAIM: Final = _CITUS["SCHEDULE_CLAIM"]
SCHEDULE_ADVANCE: Final = _CITUS["SCHEDULE_ADVANCE"]
SCHEDULE_PROBE: Final = _CITUS["SCHEDULE_PROBE"]
SCHEDULE_NEXT_DUE: Final = _CITUS["SCHEDULE_NEXT_DUE"]
