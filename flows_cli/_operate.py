"""Operating Flows: the worker's metrics and traces (``flows worker --metrics-port``,
``--otel``) and the dashboard (``flows ui``). Their packages are optional extras,
imported when a command asks for them; a missing one is named with its extra."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
from collections.abc import Iterator
from typing import Any

import flows_core as flows

from ._app import load_app
from ._open import CliError, open_store

__all__ = ["cmd_ui", "metrics_server", "worker_observer"]


def _require(module: str, extra: str, what: str) -> None:
    try:
        __import__(module)
    except ImportError as exc:
        raise CliError(
            f"{what} needs {module}, which is not installed: pip install 'flows[{extra}]'"
        ) from exc


def worker_observer(args: argparse.Namespace) -> flows.Observer | None:
    """The observer ``flows worker`` runs with: Prometheus with ``--metrics-port``,
    OpenTelemetry with ``--otel`` (both: a CompositeObserver), else None."""
    observers: list[flows.Observer] = []
    if args.metrics_port is not None:
        _require("prometheus_client", "prometheus", "--metrics-port")
        from flows_observe.prometheus import PrometheusObserver

        observers.append(PrometheusObserver())
    if args.otel:
        _require("opentelemetry", "otel", "--otel")
        from flows_observe.otel import OTelObserver

        observers.append(OTelObserver())  # the global tracer provider
    if not observers:
        return None
    return observers[0] if len(observers) == 1 else flows.CompositeObserver(observers)


@contextlib.contextmanager
def metrics_server(args: argparse.Namespace) -> Iterator[None]:
    """Serve ``/metrics`` on ``--metrics-host:--metrics-port`` while the worker runs."""
    if args.metrics_port is None:
        yield
        return
    from flows_observe.prometheus import serve_metrics

    host, port = args.metrics_host, args.metrics_port
    try:
        server = serve_metrics(port, host=host)
    except OSError as exc:
        raise CliError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    print(f"metrics on http://{shown}:{server.server_port}/metrics", flush=True)
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _ui_options(args: argparse.Namespace) -> dict[str, Any]:
    """``create_app`` options from the command line and the FLOWS_UI_* environment."""
    options: dict[str, Any] = {"read_only": args.read_only, "tenant_id": args.tenant}
    token = os.environ.get("FLOWS_UI_TOKEN") or None
    basic = os.environ.get("FLOWS_UI_BASIC_AUTH") or None
    secret = os.environ.get("FLOWS_UI_SECRET_KEY") or None
    if token is not None:
        options["token"] = token
    if basic is not None:
        options["basic_auth"] = basic
    if secret is not None:
        options["secret_key"] = secret
    if args.app:
        options["definitions"] = load_app(args.app).workflows
    return options


async def cmd_ui(args: argparse.Namespace) -> None:
    _require("starlette", "ui", "flows ui")
    _require("uvicorn", "ui", "flows ui")
    import flows_ui
    from flows_ui._security import Credentials

    options = _ui_options(args)
    # Refuse an unauthenticated public address before opening anything.
    credentials = Credentials.build(options.get("token"), options.get("basic_auth"))
    if not flows_ui.is_loopback(args.host) and not credentials.required:
        raise CliError(
            f"refusing to serve the dashboard on {args.host!r} without authentication "
            "(anyone who can reach it could cancel and terminate workflows): set "
            "FLOWS_UI_TOKEN (or FLOWS_UI_BASIC_AUTH=user:password), or use --host 127.0.0.1"
        )
    observer: flows.Observer | None = None
    from flows_ui._metrics import metrics_available

    metrics = metrics_available()
    if metrics:
        from flows_observe.prometheus import PrometheusObserver

        observer = PrometheusObserver()
    async with open_store(args) as store:
        engine = flows.Engine(store, observer=observer)
        built = flows_ui.build_server(
            engine,
            host=args.host,
            port=args.port,
            log_level="info" if args.verbose else "warning",
            metrics=metrics,
            **options,
        )
        server = _quiet_server_class()(built.config)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, server.handle_exit, sig, None)
        shown = f"[{args.host}]" if ":" in args.host else args.host
        extra = f", metrics at http://{shown}:{args.port}/metrics" if metrics else ""
        print(f"dashboard on http://{shown}:{args.port}/{extra}; Ctrl-C stops", flush=True)
        try:
            await server.serve()  # until SIGINT / SIGTERM
        except SystemExit as exc:  # uvicorn's startup failure (logged above)
            raise CliError(f"the dashboard could not start on {shown}:{args.port}") from exc
    print("dashboard stopped")


def _quiet_server_class() -> type[Any]:
    import uvicorn

    class QuietServer(uvicorn.Server):
        """uvicorn's server without its own signal handling: the CLI stops it on
        SIGINT/SIGTERM and then closes the store (uvicorn would re-raise the signal)."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return QuietServer
