"""Client operations on Citus, written once for ``CitusStore`` and ``flows_pg.SyncClient``.

Like ``flows_pg._client_ops``, each operation is a generator; here it yields a *batch*
of statements (one transaction: the async store sends it in one pipeline, a sync
connection runs it in order) and receives the rows of each.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import msgspec
import uuid6

from flows_core._errors import (
    InvalidArgument,
    WorkflowAlreadyExists,
    WorkflowNotFound,
    WorkflowNotRunning,
)
from flows_core.events import CancelRequested, Event, SignalReceived, encode_event
from flows_core.store import (
    TERMINAL_STATUSES,
    CancelOutcome,
    NewWorkflow,
    WorkflowRecord,
    WorkflowStatus,
)
from flows_pg._listener import channel_names
from flows_pg._records import record_from_row
from flows_pg._sql import compact

from . import _sql
from ._layout import CitusLayout

__all__ = [
    "CitusStatements",
    "Op",
    "Rows",
    "Step",
    "cancel_op",
    "get_op",
    "layout_op",
    "signal_op",
    "start_op",
    "start_params",
]

T = TypeVar("T")
Rows = list[tuple[Any, ...]]

_json: Final = msgspec.json.Encoder()


@dataclass(frozen=True)
class Step:
    """One statement of an operation's transaction; ``rows``: its result is wanted."""

    statement: str
    params: dict[str, Any] = field(default_factory=dict)
    rows: bool = False


Op = Generator[list[Step], list[Rows], T]


class CitusStatements:
    """The compiled statements of one schema, and its notification channels."""

    def __init__(self, schema: str, ident: str) -> None:
        self.schema = schema
        self.ident = ident
        self.work_channel, self.workflow_channel = channel_names(schema)
        self.c: dict[str, str] = {}
        for name in _sql.__all__:
            text = getattr(_sql, name)
            if name.isupper() and "{S}" in text and "{guard}" not in text:
                self.c[name] = self.q(text)
        for kind, guard, extra in (
            ("SIGNAL", _sql.SIGNAL_GUARD, ""),
            ("CANCEL", _sql.CANCEL_GUARD, ", cancel_requested = true"),
        ):
            self.c[f"{kind}_INSERT"] = self.q(_sql.INBOX_INSERT.replace("{guard}", guard))
            self.c[f"{kind}_TASK"] = self.q(_sql.ENSURE_WORKFLOW_TASK.replace("{guard}", guard))
            self.c[f"{kind}_UPDATE"] = self.q(
                _sql.INBOX_UPDATE.replace("{guard}", guard).replace("{set_extra}", extra)
            )

    def q(self, template: str) -> str:
        return compact(template.replace("{S}", self.ident))

    def wf_key(self, tenant_id: str, workflow_id: str) -> str:
        return _json.encode((tenant_id, workflow_id)).decode()

    def where(self, layout: CitusLayout, tenant_id: str, workflow_id: str) -> dict[str, Any]:
        """The parameters that name one workflow: its shard key, tenant and id."""
        return {
            "sk": layout.locate(tenant_id, workflow_id),
            "tid": tenant_id,
            "wid": workflow_id,
            "ch_work": self.work_channel,
            "ch_wf": self.workflow_channel,
            "wf_key": self.wf_key(tenant_id, workflow_id),
        }


def layout_op(st: CitusStatements) -> Op[CitusLayout | None]:
    """The schema's layout, or None if the schema is not migrated for Citus."""
    found = yield [
        Step("SELECT to_regclass(%(t)s) IS NOT NULL", {"t": f"{st.ident}.layout"}, rows=True)
    ]
    if not found[0][0][0]:
        return None
    rows = (yield [Step(st.q("SELECT shards, sharding FROM {S}.layout"), rows=True)])[0]
    return CitusLayout(int(rows[0][0]), str(rows[0][1])) if rows else None


def start_params(st: CitusStatements, layout: CitusLayout, new: NewWorkflow) -> dict[str, Any]:
    """The parameters of a start, once its shard key is checked against the layout."""
    expected = layout.locate(new.tenant_id, new.workflow_id)
    if new.shard_key != expected:
        raise InvalidArgument(
            f"on Citus the shard key of workflow {new.workflow_id!r} follows from its "
            f"tenant and id: {expected!r}, not {new.shard_key!r} (let Engine use "
            "store.sharder: do not pass sharder= to Engine)"
        )
    params = st.where(layout, new.tenant_id, new.workflow_id)
    params.update(
        name=new.name,
        version=new.version,
        input=bytes(new.input).decode(),
        event=encode_event(new.started).decode(),
        wf_task_id=uuid6.uuid7(),
    )
    return params


def start_op(st: CitusStatements, layout: CitusLayout, new: NewWorkflow) -> Op[None]:
    params = start_params(st, layout, new)
    # (only the work channel: nobody waits for a workflow that did not exist)
    results = yield [
        Step(st.c["START_WORKFLOW"], params, rows=True),
        Step(st.c["START_TASK"], params),
        Step(st.c["START_HISTORY"], params),
        Step(_sql.NOTIFY_WORK, params),
    ]
    if not results[0]:
        raise WorkflowAlreadyExists(new.workflow_id)


def _to_inbox(
    st: CitusStatements,
    layout: CitusLayout,
    kind: str,
    tenant_id: str,
    workflow_id: str,
    event: Event,
) -> Op[tuple[WorkflowStatus, bool]]:
    params = st.where(layout, tenant_id, workflow_id)
    params.update(event=encode_event(event).decode(), wf_task_id=uuid6.uuid7())
    results = yield [
        Step(st.c["INBOX_LOCK"], params, rows=True),
        Step(st.c[f"{kind}_INSERT"], params),
        Step(st.c[f"{kind}_TASK"], params),
        Step(st.c[f"{kind}_UPDATE"], params),
        Step(_sql.NOTIFY_BOTH, params),
    ]
    locked = results[0]
    if not locked:
        raise WorkflowNotFound(workflow_id, tenant_id)
    return WorkflowStatus(locked[0][0]), bool(locked[0][1])


def signal_op(
    st: CitusStatements,
    layout: CitusLayout,
    tenant_id: str,
    workflow_id: str,
    event: SignalReceived,
) -> Op[None]:
    status, _ = yield from _to_inbox(st, layout, "SIGNAL", tenant_id, workflow_id, event)
    if status in TERMINAL_STATUSES:
        raise WorkflowNotRunning(workflow_id, status.value)


def cancel_op(
    st: CitusStatements,
    layout: CitusLayout,
    tenant_id: str,
    workflow_id: str,
    event: CancelRequested,
) -> Op[CancelOutcome]:
    status, already = yield from _to_inbox(st, layout, "CANCEL", tenant_id, workflow_id, event)
    if status in TERMINAL_STATUSES:
        return CancelOutcome.ALREADY_FINISHED
    if already:
        return CancelOutcome.ALREADY_REQUESTED
    return CancelOutcome.REQUESTED


def get_op(
    st: CitusStatements, layout: CitusLayout, tenant_id: str, workflow_id: str
) -> Op[WorkflowRecord]:
    params = st.where(layout, tenant_id, workflow_id)
    rows = (yield [Step(st.c["GET_WORKFLOW"], params, rows=True)])[0]
    if not rows:
        raise WorkflowNotFound(workflow_id, tenant_id)
    return record_from_row(rows[0], rows[0][15])
