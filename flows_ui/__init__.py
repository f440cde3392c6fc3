"""Flows UI: a server-rendered dashboard for Flows workflows (Starlette + Jinja2).

``create_app(engine, ...)`` is an ASGI app to mount in a Starlette/FastAPI service;
``serve(engine, host=..., port=...)`` runs it with uvicorn and refuses any address
other than loopback without a token or basic auth.
"""

from ._app import UIConfig, app_config, create_app
from ._security import check_bind, is_loopback
from ._serve import build_server, serve, serve_async

__all__ = [
    "UIConfig",
    "app_config",
    "build_server",
    "check_bind",
    "create_app",
    "is_loopback",
    "serve",
    "serve_async",
]
