"""``/metrics`` on the dashboard: Prometheus metrics behind the dashboard's credentials.

flows_observe (and through it prometheus_client, extra ``flows[prometheus]``) is imported
only when metrics are asked for, so the dashboard runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from flows_core import CompositeObserver, Engine, InvalidArgument, Observer

from ._security import Credentials

__all__ = ["MetricsEndpoint", "metrics_available", "prometheus_registry", "sampler_lifespan"]


def metrics_available() -> bool:
    """True when prometheus_client is installed (``/metrics`` can be served)."""
    try:
        import flows_observe.prometheus  # noqa: F401  (needs prometheus_client)
    except ImportError:
        return False
    return True


def prometheus_registry(observer: Observer) -> Any:
    """The registry of the PrometheusObserver among ``observer`` (a CompositeObserver
    is searched), else None (prometheus_client's default registry)."""
    from flows_observe.prometheus import PrometheusObserver

    found = [observer]
    if isinstance(observer, CompositeObserver):
        found = list(observer.observers)
    for candidate in found:
        if isinstance(candidate, PrometheusObserver):
            return candidate.registry
    return None


class MetricsEndpoint:
    """prometheus_client's ASGI app, answering only requests that carry the dashboard's
    bearer token or basic-auth credentials when it has any (Prometheus sends them with
    ``authorization`` / ``basic_auth`` in its scrape config)."""

    def __init__(self, registry: Any, credentials: Credentials) -> None:
        from flows_observe.prometheus import metrics_app

        self.app: ASGIApp = metrics_app(registry)
        self.credentials = credentials

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.credentials.required:
            header = ""
            for name, value in scope.get("headers", []):
                if name == b"authorization":
                    header = value.decode("latin-1")
            creds = self.credentials
            if creds.user_for_bearer(header) is None and creds.user_for_basic(header) is None:
                headers = {}
                if creds.basic_users:
                    headers["WWW-Authenticate"] = 'Basic realm="Flows", charset="UTF-8"'
                response = PlainTextResponse("authentication required\n", 401, headers=headers)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def sampler_lifespan(
    engine: Engine,
) -> Callable[[Starlette], contextlib.AbstractAsyncContextManager[None]]:
    """A Starlette lifespan that samples the store into the engine's observer (queue
    gauges stay fresh without a worker) while the app runs on its own."""
    from flows_observe import run_sampler

    if engine.observer.sample_interval is None:
        raise InvalidArgument("the engine's observer samples nothing (sample_interval is None)")

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        stop = asyncio.Event()
        task = asyncio.ensure_future(run_sampler(engine.observer, engine.store, stop=stop))
        try:
            yield
        finally:
            stop.set()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return lifespan
