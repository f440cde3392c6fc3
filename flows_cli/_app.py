"""The user's definitions (``--app module:attribute``) and the checks made with them:
a start's input and a signal's payload against the types the workflow declares."""

from __future__ import annotations

import importlib
import json
import os
import sys
from datetime import UTC, datetime
from typing import Any

import msgspec

import flows_core as flows
from flows_core.store import ListQuery, Store

from ._open import CliError

__all__ = ["App", "check_signal", "load_app", "parse_json", "resolve_version"]

Definition = flows.Workflow[Any, Any] | flows.Activity[Any, Any]


class App:
    """The workflows and activities of ``--app``."""

    def __init__(self, spec: str, items: list[Definition]) -> None:
        self.spec = spec
        self.workflows = [i for i in items if isinstance(i, flows.Workflow)]
        self.activities = [i for i in items if isinstance(i, flows.Activity)]

    def workflow(self, name: str, version: int) -> flows.Workflow[Any, Any]:
        """The definition of ``name`` at ``version``, or a CliError naming what --app has."""
        for wf in self.workflows:
            if wf.name == name and wf.version == version:
                return wf
        have = sorted(f"{wf.name} v{wf.version}" for wf in self.workflows) or ["no workflow"]
        raise CliError(
            f"{self.spec} has no workflow {name!r} v{version} (it has {', '.join(have)})"
        )


def load_app(spec: str) -> App:
    """Definitions from ``module:attr``: a list of workflows and activities, or a callable
    returning one. The current directory is importable, as with ``python -m``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise CliError(f"--app must look like module:attribute, got {spec!r}")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CliError(f"cannot import {module_name!r}: {exc}") from exc
    try:
        value = getattr(module, attr)
    except AttributeError as exc:
        raise CliError(f"module {module_name!r} has no attribute {attr!r}") from exc
    if callable(value) and not isinstance(value, type | flows.Workflow | flows.Activity):
        value = value()
    items = list(value) if isinstance(value, list | tuple | set) else [value]
    for item in items:
        if not isinstance(item, flows.Workflow | flows.Activity):
            raise CliError(f"{spec} must give workflows and activities, found {item!r}")
    return App(spec, items)


def parse_json(text: str | None, what: str) -> Any:
    """The value of a JSON option (None when it was not given)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise CliError(f"{what} is not valid JSON: {exc.msg} at position {exc.pos}") from exc


async def resolve_version(store: Store, name: str, version: int | None, force: bool) -> int:
    """The version to start ``name`` at without ``--app``: the one given, else the highest
    that a registered worker serves, else that of the newest workflow of that name. A name
    that no worker serves and that was never started is refused unless ``force``."""
    served = {v for w in await store.list_workers() for (n, v) in w.workflow_types if n == name}
    if version is not None and (force or version in served):
        return version
    if served:
        if version is None:
            return max(served)
        raise CliError(
            f"no worker serves {name!r} v{version} (registered workers serve versions "
            f"{sorted(served)}); --force starts it anyway"
        )
    started = await store.list_workflows(ListQuery(tenant_id=None, name=name, limit=1))
    if started and version is None:
        return started[0].version
    if started or force:
        return 1 if version is None else version
    raise CliError(
        f"unknown workflow {name!r}: no registered worker serves it and none was started "
        "here; give --app module:attribute to check the name and the input against your "
        "definitions, or --force to start it anyway"
    )


async def check_signal(
    store: Store, app: App, tenant: str, workflow_id: str, name: str, payload: Any
) -> str | None:
    """Check ``payload`` against the type the workflow will decode signal ``name`` as,
    found by replaying its history with ``app``'s definition. Raises CliError when it does
    not match; returns a note when it cannot be checked (no wait for it is pending)."""
    record = await store.get_workflow(tenant, workflow_id)
    if record.status != flows.WorkflowStatus.RUNNING:
        return None  # sending it fails, and says why
    definition = app.workflow(record.name, record.version)
    history = await store.get_history(tenant, workflow_id)
    try:
        awaited = flows.awaited_signals(definition, history, datetime.now(UTC))
    except Exception as exc:
        return f"the payload was not checked: replaying {workflow_id} raised {exc!r}"
    type_ = awaited.get(name)
    if type_ is None:
        return (
            f"the payload was not checked: {workflow_id} is not waiting for signal {name!r} "
            "now (the signal waits for the workflow to ask for it)"
        )
    try:
        msgspec.json.decode(msgspec.json.encode(payload), type=type_)
    except msgspec.ValidationError as exc:
        type_name = getattr(type_, "__qualname__", None) or repr(type_)
        raise CliError(
            f"--payload does not match {type_name}, which {workflow_id} expects for signal "
            f"{name!r}: {exc}"
        ) from exc
    return None
