"""Run the dashboard with uvicorn, refusing an unauthenticated non-loopback address."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette

from flows_core import Engine, InvalidArgument

from ._app import app_config, create_app
from ._security import check_bind

__all__ = ["build_server", "serve", "serve_async"]


def build_server(
    target: Engine | Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    log_level: str = "info",
    uvicorn_options: dict[str, Any] | None = None,
    **app_options: Any,
) -> uvicorn.Server:
    """A uvicorn server for ``target`` (an Engine, or an app from ``create_app``).

    ``app_options`` go to ``create_app`` when ``target`` is an Engine. Raises
    InvalidArgument, before binding anything, when ``host`` is not a loopback address
    and the app has no token or basic auth.
    """
    if isinstance(target, Engine):
        app = create_app(target, **app_options)
    else:
        if app_options:
            raise InvalidArgument(
                f"options {sorted(app_options)} are for create_app(); pass them there, "
                "or pass the Engine to serve()"
            )
        app = target
    check_bind(host, app_config(app).credentials)
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, **(uvicorn_options or {})
    )
    return uvicorn.Server(config)


async def serve_async(
    target: Engine | Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    **options: Any,
) -> None:
    """Serve in the running event loop (where the engine's store was opened) until
    stopped (SIGINT/SIGTERM)."""
    await build_server(target, host=host, port=port, **options).serve()


def serve(
    target: Engine | Starlette,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    **options: Any,
) -> None:
    """Serve the dashboard on ``host:port`` until interrupted (own event loop). Refuses a
    non-loopback ``host`` unless a token or basic auth is configured."""
    server = build_server(target, host=host, port=port, **options)
    asyncio.run(server.serve())
