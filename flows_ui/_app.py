"""The dashboard as a Starlette app: pages, actions, authentication and CSRF."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlencode

import jinja2
import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from flows_core import (
    DEFAULT_TENANT,
    Engine,
    InvalidArgument,
    PayloadError,
    StoreUnavailable,
    Workflow,
    WorkflowNotDeadLettered,
    WorkflowNotFound,
    WorkflowNotRunning,
    WorkflowStatus,
    awaited_signals,
)
from flows_core.store import TERMINAL_STATUSES, WorkerInfo, WorkflowRecord

from ._listing import Cursor, fetch_page, parse_filters, store_filters
from ._metrics import MetricsEndpoint, metrics_available, prometheus_registry, sampler_lifespan
from ._security import SESSION_COOKIE, Credentials, Session, SessionSigner
from ._timeline import build_timeline, pretty

__all__ = ["UIConfig", "app_config", "create_app"]

log = logging.getLogger("flows.ui")

LIVE_WITHIN: Final = timedelta(seconds=60)
"""A worker whose last heartbeat is older than this is shown as gone."""
MAX_TIMELINE: Final = 1000
"""Events (and steps) shown on a workflow page unless ``?all=1``."""
MAX_FORM_BYTES: Final = 4 * 1024 * 1024
"""Larger request bodies get 413 (a signal payload is at most 2 MiB by default)."""
ACTIONS: Final = ("signal", "cancel", "terminate", "retry", "rerun")
NOTICES: Final = {
    "signal": "Signal sent.",
    "cancel": "Cancel requested.",
    "terminate": "Workflow terminated.",
    "retry": "Dead letter put back to running.",
    "rerun": "Started as a new workflow (this is the new one).",
}
_HERE: Final = Path(__file__).parent
_SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(frozen=True)
class UIConfig:
    """Everything ``create_app`` was given (kept on ``app.state.flows_ui``)."""

    engine: Engine
    credentials: Credentials
    signer: SessionSigner
    read_only: bool
    tenant_id: str | None
    definitions: Mapping[tuple[str, int], Workflow[Any, Any]] | None
    """The app's workflows by (name, version), when given."""
    signal_types: Mapping[str, Mapping[str, Any]]
    page_size: int
    title: str
    secure_cookies: bool | None
    env: jinja2.Environment = field(repr=False)


class HTTPProblem(Exception):
    """An error page with a status code; ``message`` is shown escaped."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass
class Visit:
    """One request: who makes it, their session, and helpers for the templates."""

    request: Request
    config: UIConfig
    session: Session
    user: str | None
    new_session: bool

    @property
    def client_ip(self) -> str:
        return self.request.client.host if self.request.client else "unknown"

    @property
    def who(self) -> str:
        """The acting identity for the audit log: ``user@ip`` or ``anonymous@ip``."""
        return f"{self.user or 'anonymous'}@{self.client_ip}"

    @property
    def csrf(self) -> str:
        return self.config.signer.csrf_token(self.session)

    def url(self, route: str, /, **query: Any) -> str:
        """Path of ``route`` (under the mount point) with a query string."""
        root: str = self.request.scope.get("root_path", "")
        path = root + str(self.request.app.url_path_for(route))
        pairs = [(k, v) for k, v in query.items() if v is not None and v != ""]
        return path + ("?" + urlencode(pairs) if pairs else "")

    def tenant(self, given: str | None) -> str:
        """The tenant of a request: the scope when tenant-scoped (another tenant's
        workflow is then simply not found), else the given one or the default."""
        scope = self.config.tenant_id
        if scope is not None:
            if given and given != scope:
                raise HTTPProblem(404, "no such workflow")
            return scope
        return given or DEFAULT_TENANT


Handler = Callable[["_UI", Visit], Awaitable[Response]]
_OPEN: Final = frozenset({"login", "css"})
"""Endpoints served without authentication."""


def _page(handler: Handler) -> Callable[[_UI, Request], Awaitable[Response]]:
    """Wrap an endpoint: session, authentication, error pages, security headers."""

    @functools.wraps(handler)
    async def endpoint(self: _UI, request: Request) -> Response:
        config = self.config
        cookie_session = config.signer.load(request.cookies.get(SESSION_COOKIE))
        session = cookie_session or Session.fresh()
        header = request.headers.get("authorization", "")
        # A login stays valid only while its user still has a token.
        session_user = session.user if session.user in config.credentials.tokens else None
        user = (
            config.credentials.user_for_bearer(header)
            or config.credentials.user_for_basic(header)
            or session_user
        )
        visit = Visit(request, config, session, user, cookie_session is None)
        if config.credentials.required and user is None and handler.__name__ not in _OPEN:
            response = self._unauthenticated(visit)
        else:
            try:
                response = await handler(self, visit)
            except HTTPProblem as problem:
                response = self.render(visit, "error.html", problem.status, message=problem.message)
            except WorkflowNotFound:
                response = self.render(visit, "error.html", 404, message="no such workflow")
            except InvalidArgument as exc:
                response = self.render(visit, "error.html", 400, message=str(exc))
            except StoreUnavailable as exc:
                response = self.render(
                    visit, "error.html", 503, message=f"store unavailable: {exc}"
                )
        if visit.new_session:
            self.set_session(response, visit, visit.session)
        for name, value in _SECURITY_HEADERS.items():
            if name not in response.headers:  # the stylesheet keeps its cache header
                response.headers[name] = value
        return response

    return endpoint


class _UI:
    def __init__(self, config: UIConfig) -> None:
        self.config = config

    # -- plumbing --

    def render(self, visit: Visit, template: str, status: int = 200, **context: Any) -> Response:
        config = self.config
        nav = {"dead_letters.html": "dead_letters", "workers.html": "workers"}.get(template)
        nav = nav or {"queues.html": "queues"}.get(template, "workflows")
        body = config.env.get_template(template).render(
            v=visit,
            nav=nav,
            status_code=status,
            title=config.title,
            read_only=config.read_only,
            tenant_scope=config.tenant_id,
            auth_required=config.credentials.required,
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def set_session(self, response: Response, visit: Visit, session: Session) -> None:
        secure = self.config.secure_cookies
        if secure is None:
            secure = visit.request.url.scheme == "https"
        response.set_cookie(
            SESSION_COOKIE,
            self.config.signer.dump(session),
            max_age=int(session.expires - datetime.now(UTC).timestamp()),
            path=(visit.request.scope.get("root_path") or "") + "/",
            secure=secure,
            httponly=True,
            samesite="strict",
        )

    def _unauthenticated(self, visit: Visit) -> Response:
        creds = self.config.credentials
        if creds.tokens and visit.request.method == "GET":
            target = visit.request.url.path
            if visit.request.url.query:
                target += "?" + visit.request.url.query
            return RedirectResponse(visit.url("login", next=target), status_code=303)
        response = self.render(visit, "error.html", 401, message="authentication required")
        if creds.basic_users:
            response.headers["WWW-Authenticate"] = 'Basic realm="Flows", charset="UTF-8"'
        return response

    async def form(self, visit: Visit) -> dict[str, str]:
        """The POSTed form, after the CSRF check (403 and a log line on failure)."""
        request = visit.request
        origin = request.headers.get("origin")
        if origin and origin != "null" and _origin_host(origin) != request.headers.get("host"):
            log.warning("refused cross-origin POST %s from %s", request.url.path, visit.who)
            raise HTTPProblem(403, "cross-origin form refused")
        async with request.form(max_files=0, max_fields=20, max_part_size=MAX_FORM_BYTES) as data:
            values = {k: v for k, v in data.items() if isinstance(v, str)}
        if not self.config.signer.check_csrf(
            self.config.signer.load(request.cookies.get(SESSION_COOKIE)),
            values.get("csrf_token", ""),
        ):
            log.warning("refused POST %s from %s: bad CSRF token", request.url.path, visit.who)
            raise HTTPProblem(
                403, "the form's security token is missing or stale: reload the page and retry"
            )
        return values

    # -- login --

    @_page
    async def login(self, visit: Visit) -> Response:
        next_url = _safe_next(visit, visit.request.query_params.get("next"))
        if not self.config.credentials.tokens:
            return RedirectResponse(next_url, status_code=303)  # nothing to log in with
        if visit.request.method == "GET":
            return self.render(visit, "login.html", next=next_url, error=None)
        values = await self.form(visit)
        next_url = _safe_next(visit, values.get("next"))
        user = self.config.credentials.user_for_token(values.get("token", ""))
        if user is None:
            log.warning("failed UI login from %s", visit.who)
            return self.render(visit, "login.html", 401, next=next_url, error="wrong token")
        log.info("UI login: %s@%s", user, visit.client_ip)
        response = RedirectResponse(next_url, status_code=303)
        visit.new_session = False
        self.set_session(response, visit, Session.fresh(user))
        return response

    @_page
    async def logout(self, visit: Visit) -> Response:
        await self.form(visit)
        response = RedirectResponse(visit.url("login"), status_code=303)
        visit.new_session = False
        self.set_session(response, visit, Session.fresh())
        return response

    # -- pages --

    @_page
    async def index(self, visit: Visit) -> Response:
        return RedirectResponse(visit.url("workflows"), status_code=303)

    @_page
    async def css(self, visit: Visit) -> Response:
        return Response(
            (_HERE / "static" / "flows.css").read_bytes(),
            media_type="text/css",
            headers={"Cache-Control": "max-age=300"},
        )

    @_page
    async def workflows(self, visit: Visit) -> Response:
        return await self._listing(visit, "workflows.html", parked_only=False)

    @_page
    async def dead_letters(self, visit: Visit) -> Response:
        return await self._listing(visit, "dead_letters.html", parked_only=True)

    async def _listing(self, visit: Visit, template: str, *, parked_only: bool) -> Response:
        q = visit.request.query_params
        form = {k: q.get(k, "").strip() for k in ("status", "name", "tenant", "id", "from", "to")}
        if parked_only:
            form["status"] = WorkflowStatus.PARKED.value
        engine = self.config.engine
        # The Engine's own checks of a listing's status, name and tenant (clear errors).
        engine.planner.list_query(None, form["status"] or None, form["name"] or None, 1, 0)
        if form["tenant"]:
            engine.tenant_for(form["tenant"])
        filters = parse_filters(
            tenant_scope=self.config.tenant_id,
            tenant=form["tenant"],
            status=form["status"],
            name=form["name"],
            id_prefix=form["id"],
            created_from=_parse_time(form["from"], "from"),
            created_to=_parse_time(form["to"], "to"),
        )
        cursor = Cursor.decode(q["after"]) if q.get("after") else None
        store = self.config.engine.store
        page = await fetch_page(store, filters, cursor, self.config.page_size)
        counts: dict[str, int] | None = None
        if self.config.tenant_id is None:
            counts = dict((await store.stats()).workflows)
        pushed = store_filters()
        return self.render(
            visit,
            template,
            page=page,
            form=form,
            counts=counts,
            statuses=[s.value for s in WorkflowStatus],
            next_url=(
                None
                if page.next_cursor is None
                else _with_query(visit, after=page.next_cursor.encode(), **form)
            ),
            first_url=_with_query(visit, **form) if cursor is not None else None,
            filtered_here=[
                f for f in ("id_prefix", "created_from", "created_to") if f not in pushed
            ],
        )

    @_page
    async def workflow(self, visit: Visit) -> Response:
        q = visit.request.query_params
        tenant = visit.tenant(q.get("tenant"))
        workflow_id = q.get("id", "")
        if not workflow_id:
            raise HTTPProblem(400, "which workflow? (id= is missing)")
        engine = self.config.engine
        info = await engine.query(workflow_id, tenant_id=tenant)  # checks the id first
        record = await engine.store.get_workflow(tenant, workflow_id)
        events = await engine.store.get_history(tenant, workflow_id)
        timeline = build_timeline(events)
        show_all = q.get("all") == "1"
        notice = NOTICES.get(q.get("done", ""))
        refresh = q.get("refresh", "")
        return self.render(
            visit,
            "workflow.html",
            record=record,
            info=info,
            timeline=timeline,
            entries=timeline.entries if show_all else timeline.entries[:MAX_TIMELINE],
            steps=timeline.steps if show_all else timeline.steps[:MAX_TIMELINE],
            cut=0 if show_all else max(0, len(timeline.entries) - MAX_TIMELINE),
            input_text=pretty(record.input),
            output_text=pretty(record.output) if record.output is not None else None,
            status_text=None if record.status_value is None else pretty(record.status_value),
            notice=notice,
            refresh=(
                str(min(max(int(refresh), 1), 3600))
                if refresh.isdigit() and len(refresh) < 7 and record.status not in TERMINAL_STATUSES
                else ""
            ),
            actions=_available_actions(record),
            now=engine.store.clock.now(),
            terminal=record.status in TERMINAL_STATUSES,
        )

    @_page
    async def raw(self, visit: Visit) -> Response:
        q = visit.request.query_params
        tenant = visit.tenant(q.get("tenant"))
        record = await self.config.engine.store.get_workflow(tenant, q.get("id", ""))
        part = q.get("part", "input")
        data = {"input": record.input, "output": record.output}.get(part)
        if data is None:
            raise HTTPProblem(404, f"this workflow has no {part}")
        return Response(
            bytes(data),
            media_type="application/json",
            headers={"Content-Disposition": f'attachment; filename="{part}.json"'},
        )

    @_page
    async def workers(self, visit: Visit) -> Response:
        self._fleet_page(visit)
        engine = self.config.engine
        now = engine.store.clock.now()
        workers = sorted(await engine.store.list_workers(), key=lambda w: w.worker_id)
        rows = [(w, now - w.heartbeat_at, now - w.heartbeat_at <= LIVE_WITHIN) for w in workers]
        return self.render(
            visit, "workers.html", rows=rows, live=sum(1 for _, _, ok in rows if ok), now=now
        )

    @_page
    async def queues(self, visit: Visit) -> Response:
        self._fleet_page(visit)
        stats = await self.config.engine.store.stats()
        shards = sorted(stats.queue_depth.items(), key=lambda kv: (-kv[1], kv[0]))
        return self.render(
            visit, "queues.html", stats=stats, chart=_bar_chart(shards[:40]), shards=shards
        )

    def _fleet_page(self, visit: Visit) -> None:
        if self.config.tenant_id is not None:
            raise HTTPProblem(
                404,
                "workers and queues are shared by every tenant: not shown to a tenant-scoped UI",
            )

    # -- actions --

    async def action(self, visit: Visit, action: str) -> Response:
        if self.config.read_only:
            log.warning("refused %s by %s: the UI is read-only", action, visit.who)
            raise HTTPProblem(403, "this dashboard is read-only")
        request = visit.request
        values: Mapping[str, str]
        if request.method == "POST":
            values = await self.form(visit)
        else:
            values = {k: v for k, v in request.query_params.items()}
        tenant = visit.tenant(values.get("tenant"))
        workflow_id = values.get("id", "")
        if not workflow_id:
            raise HTTPProblem(400, "which workflow? (id is missing)")
        record = await self.config.engine.store.get_workflow(tenant, workflow_id)
        form = {k: values.get(k, "") for k in ("name", "payload", "reason")}
        if request.method == "GET":
            return await self._confirm(visit, action, record, form, None, 200)
        if values.get("confirm") != "yes":
            return await self._confirm(
                visit, action, record, form, "tick the confirmation box to go ahead", 400
            )
        try:
            target = await self._perform(visit, action, record, form)
        except (InvalidArgument, PayloadError, WorkflowNotRunning, WorkflowNotDeadLettered) as exc:
            log.info(
                "UI %s of workflow %r (tenant %r) by %s refused: %s",
                action,
                record.workflow_id,
                record.tenant_id,
                visit.who,
                exc,
            )
            status = 400 if isinstance(exc, InvalidArgument | PayloadError) else 409
            return await self._confirm(visit, action, record, form, str(exc), status)
        return RedirectResponse(
            visit.url(
                "workflow",
                tenant=None if self.config.tenant_id else target.tenant_id,
                id=target.workflow_id,
                done=action,
                refresh="1" if action in ("signal", "retry", "rerun", "cancel") else None,
            ),
            status_code=303,
        )

    async def _confirm(
        self,
        visit: Visit,
        action: str,
        record: WorkflowRecord,
        form: Mapping[str, str],
        error: str | None,
        status: int,
    ) -> Response:
        types: dict[str, Any] = {}
        if action == "signal":
            types = {**self._signal_types(record.name), **await self._awaited_types(record)}
        return self.render(
            visit,
            "confirm.html",
            status,
            action=action,
            record=record,
            form=form,
            error=error,
            signal_types={n: _type_name(t) for n, t in types.items()},
        )

    async def _awaited_types(self, record: WorkflowRecord) -> dict[str, Any]:
        """The types the workflow's pending signal waits decode their signals as, found
        by replaying its history with the app's definition (``definitions``) through
        ``flows_core.awaited_signals``. Empty when it waits for no signal, or its
        definition is not loaded or cannot replay it."""
        definitions = self.config.definitions
        definition = None if definitions is None else definitions.get((record.name, record.version))
        if definition is None or record.status in TERMINAL_STATUSES:
            return {}
        store = self.config.engine.store
        history = await store.get_history(record.tenant_id, record.workflow_id)
        waits = {s.name for s in build_timeline(history).open_steps if s.kind == "signal wait"}
        if not waits:
            return {}
        try:
            awaited = awaited_signals(definition, history, store.clock.now())
        except Exception as exc:  # the code may be broken (a dead letter): say nothing
            log.info("replay of %r to check a signal failed: %r", record.workflow_id, exc)
            return {}
        return {name: type_ for name, type_ in sorted(awaited.items()) if name in waits}

    def _signal_types(self, workflow_name: str) -> Mapping[str, Any]:
        """The signal types ``signal_types`` registers for ``workflow_name``."""
        return self.config.signal_types.get(workflow_name, {})

    async def _perform(
        self, visit: Visit, action: str, record: WorkflowRecord, form: Mapping[str, str]
    ) -> WorkflowRecord:
        engine = self.config.engine
        tenant, wf_id = record.tenant_id, record.workflow_id
        detail = ""
        target = record
        if action == "signal":
            name = form["name"].strip()
            payload = await self._signal_payload(record, name, form["payload"])
            await engine.signal(wf_id, name, payload, tenant_id=tenant)
            # Re-encoded: one line whatever was typed (no forged log lines).
            sent = msgspec.json.encode(payload).decode()
            detail = f" signal {name!r} payload {_clip(sent)}"
        elif action == "cancel":
            outcome = await engine.cancel(wf_id, reason=_reason(visit, form), tenant_id=tenant)
            detail = f" reason {form.get('reason', '').strip()!r}, outcome {outcome.value}"
        elif action == "terminate":
            if not callable(getattr(engine.store, "terminate_workflow", None)):
                raise InvalidArgument(
                    f"{type(engine.store).__name__} does not implement terminate_workflow yet"
                )
            outcome2 = await engine.terminate(wf_id, reason=_reason(visit, form), tenant_id=tenant)
            detail = f" reason {form.get('reason', '').strip()!r}, outcome {outcome2.value}"
        elif action == "retry":
            await engine.retry(wf_id, tenant_id=tenant)
        elif action == "rerun":
            run = await engine.rerun(wf_id, tenant_id=tenant)
            target = await engine.store.get_workflow(run.tenant_id, run.workflow_id)
            detail = f" as new workflow {run.workflow_id!r}"
        else:  # pragma: no cover - routes are made from ACTIONS
            raise HTTPProblem(404, f"unknown action {action!r}")
        log.info(
            "UI %s of workflow %r (tenant %r, name %r) by %s at %s:%s",
            action,
            wf_id,
            tenant,
            record.name,
            visit.who,
            datetime.now(UTC).isoformat(timespec="seconds"),
            detail or " done",
            extra={
                "flows_ui": {
                    "action": action,
                    "workflow_id": wf_id,
                    "tenant_id": tenant,
                    "who": visit.who,
                }
            },
        )
        return target

    async def _signal_payload(self, record: WorkflowRecord, name: str, text: str) -> Any:
        """The decoded signal payload: JSON syntax always; with the app's definitions, the
        type the workflow's pending wait for the signal decodes it as (found by replay),
        else the type ``signal_types`` registers for it."""
        if not name:
            raise InvalidArgument("the signal needs a name")
        definitions = self.config.definitions
        if definitions is not None:
            names = {name for name, _ in definitions}
            if record.name not in names:
                raise InvalidArgument(
                    f"workflow {record.name!r} is not among the app's definitions "
                    f"({', '.join(sorted(names)) or 'none'}): refusing an unchecked signal"
                )
        types = self._signal_types(record.name)
        data = (text.strip() or "null").encode("utf-8")
        if types and name not in types:
            raise InvalidArgument(
                f"workflow {record.name!r} takes no signal {name!r} "
                f"(it takes: {', '.join(sorted(types))})"
            )
        expected = (await self._awaited_types(record)).get(name, types.get(name, Any))
        try:
            value = msgspec.json.decode(data, type=expected)
        except msgspec.ValidationError as exc:
            raise PayloadError(
                f"payload of signal {name!r} does not match {_type_name(expected)}: {exc}"
            ) from None
        except msgspec.DecodeError as exc:
            raise PayloadError(f"payload of signal {name!r} is not valid JSON: {exc}") from None
        # Send the JSON as typed, so a Struct payload reaches the workflow field by field.
        return msgspec.json.decode(data) if expected is not Any else value


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + f"...({len(text)} chars)"


def _reason(visit: Visit, form: Mapping[str, str]) -> str:
    reason = form.get("reason", "").strip()
    return (
        f"{reason} (by {visit.who} via the Flows UI)"
        if reason
        else f"by {visit.who} via the Flows UI"
    )


def _type_name(type_: Any) -> str:
    return getattr(type_, "__qualname__", None) or repr(type_)


def _available_actions(record: WorkflowRecord) -> list[str]:
    if record.status == WorkflowStatus.PARKED:
        return ["retry", "rerun", "signal", "cancel", "terminate"]
    if record.status in TERMINAL_STATUSES:
        return ["rerun"]
    return ["signal", "cancel", "terminate", "rerun"]


def _origin_host(origin: str) -> str:
    return origin.split("://", 1)[-1].rstrip("/")


def _safe_next(visit: Visit, target: str | None) -> str:
    """A same-site path to go to after login (never another site)."""
    root = visit.request.scope.get("root_path", "")
    if (
        target
        and target.startswith(root + "/")
        and not target.startswith("//")
        and "\\" not in target
    ):
        return target
    return visit.url("workflows")


def _with_query(visit: Visit, **query: str) -> str:
    pairs = [(k, v) for k, v in query.items() if v]
    return visit.request.url.path + ("?" + urlencode(pairs) if pairs else "")


def _parse_time(text: str, what: str) -> datetime | None:
    """A time filter: ISO 8601; without a zone it is UTC (what ``datetime-local`` sends)."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidArgument(
            f"{what!r} is not a date and time (YYYY-MM-DDTHH:MM): {text[:40]!r}"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


def _bar_chart(shards: list[tuple[str, int]]) -> dict[str, Any]:
    """Geometry of a horizontal bar chart of queue depth per shard (inline SVG)."""
    top = max((depth for _, depth in shards), default=0) or 1
    bar_width = 520
    rows = [
        {
            "shard": shard,
            "depth": depth,
            "y": 6 + i * 22,
            "width": max(2, round(depth / top * bar_width)),
        }
        for i, (shard, depth) in enumerate(shards)
    ]
    return {"rows": rows, "height": 12 + 22 * len(rows), "bar_width": bar_width}


def _duration(value: timedelta | None) -> str:
    if value is None:
        return ""
    seconds = value.total_seconds()
    if seconds < 0:
        return "-" + _duration(-value)
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.2f} s".replace(".00 s", " s")
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h"


def _time(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def _worker_types(info: WorkerInfo) -> str:
    return ", ".join(f"{name} v{version}" for name, version in info.workflow_types)


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["duration"] = _duration
    env.filters["time"] = _time
    env.filters["worker_types"] = _worker_types
    return env


def create_app(
    engine: Engine,
    *,
    definitions: Iterable[Workflow[Any, Any]] | None = None,
    signal_types: Mapping[str, Mapping[str, Any]] | None = None,
    token: str | Mapping[str, str] | None = None,
    basic_auth: str | tuple[str, str] | Mapping[str, str] | None = None,
    read_only: bool = False,
    tenant_id: str | None = None,
    secret_key: bytes | str | None = None,
    page_size: int = 50,
    title: str = "Flows",
    secure_cookies: bool | None = None,
    metrics: bool = False,
) -> Starlette:
    """The Flows dashboard as an ASGI app (mount it anywhere, or run it with ``serve``).

    ``engine`` drives any Store (memory, PostgreSQL, Citus). ``definitions``: the app's
    workflows; when given, signals can only be sent to workflows among them and their
    payloads are checked against the signal types ``signal_types`` declares
    (``{workflow name: {signal name: type}}``; without a type, any JSON is accepted).
    ``token`` (or ``{user: token}``) and ``basic_auth`` (``"user:password"``,
    ``(user, password)`` or ``{user: password}``) require authentication on every
    request. ``read_only`` hides and refuses every action. ``tenant_id`` scopes the UI
    to one tenant. ``secret_key`` signs the session cookies (random per process when not
    given: pass one when several processes serve the UI behind one address).
    ``secure_cookies``: None follows the request's scheme.
    ``metrics``: also serve Prometheus metrics at ``/metrics`` (needs prometheus_client),
    behind the same token or basic auth: the registry of the PrometheusObserver given to
    ``engine`` (``Engine(store, observer=...)``), else prometheus_client's default one.
    Run on its own (not mounted) and not tenant-scoped, the app also samples the store
    into that observer (queue gauges without a worker).
    """
    if not isinstance(engine, Engine):
        raise InvalidArgument(f"create_app() takes a flows_core.Engine, got {engine!r}")
    if isinstance(page_size, bool) or not isinstance(page_size, int) or not 1 <= page_size <= 1000:
        raise InvalidArgument(f"page_size must be an integer from 1 to 1000, got {page_size!r}")
    if tenant_id is not None:
        tenant_id = engine.tenant_for(tenant_id)
    by_key: dict[tuple[str, int], Workflow[Any, Any]] | None = None
    if definitions is not None:
        by_key = {}
        for definition in definitions:
            if not isinstance(definition, Workflow):
                raise InvalidArgument(
                    f"definitions must be workflows made with @flows.workflow, got {definition!r}"
                )
            by_key[(definition.name, definition.version)] = definition
    config = UIConfig(
        engine=engine,
        credentials=Credentials.build(token, basic_auth),
        signer=SessionSigner(secret_key),
        read_only=read_only,
        tenant_id=tenant_id,
        definitions=by_key,
        signal_types={k: dict(v) for k, v in (signal_types or {}).items()},
        page_size=page_size,
        title=title,
        secure_cookies=secure_cookies,
        env=_environment(),
    )
    ui = _UI(config)

    def bind(
        method: Callable[[_UI, Request], Awaitable[Response]],
    ) -> Callable[[Request], Awaitable[Response]]:
        return functools.partial(method, ui)

    def action_route(action: str) -> Route:
        @_page
        async def run_action(self: _UI, visit: Visit) -> Response:
            return await self.action(visit, action)

        return Route(f"/actions/{action}", bind(run_action), methods=["GET", "POST"], name=action)

    routes = [
        Route("/", bind(_UI.index), name="index"),
        Route("/workflows", bind(_UI.workflows), name="workflows"),
        Route("/workflow", bind(_UI.workflow), name="workflow"),
        Route("/workflow/raw", bind(_UI.raw), name="raw"),
        Route("/dead-letters", bind(_UI.dead_letters), name="dead_letters"),
        Route("/workers", bind(_UI.workers), name="workers"),
        Route("/queues", bind(_UI.queues), name="queues"),
        Route("/login", bind(_UI.login), methods=["GET", "POST"], name="login"),
        Route("/logout", bind(_UI.logout), methods=["POST"], name="logout"),
        Route("/static/flows.css", bind(_UI.css), name="css"),
        *(action_route(a) for a in ACTIONS),
    ]
    lifespan = None
    if metrics:
        if not metrics_available():
            raise InvalidArgument(
                "metrics need prometheus_client, which is not installed: "
                "pip install 'flows[prometheus]'"
            )
        registry = prometheus_registry(engine.observer)
        routes.append(Route("/metrics", MetricsEndpoint(registry, config.credentials)))
        if tenant_id is None and engine.observer.sample_interval is not None:
            lifespan = sampler_lifespan(engine)
    app = Starlette(routes=routes, max_body_size=MAX_FORM_BYTES, lifespan=lifespan)
    app.state.flows_ui = config
    return app


def app_config(app: object) -> UIConfig:
    """The UIConfig of an app made by ``create_app`` (InvalidArgument otherwise)."""
    state = getattr(app, "state", None)
    config = getattr(state, "flows_ui", None)
    if not isinstance(config, UIConfig):
        raise InvalidArgument(f"{app!r} is not a Flows UI app (make it with flows_ui.create_app)")
    return config
