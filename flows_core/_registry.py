"""Workflow definitions by (name, version): what an Engine starts and a Worker runs."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ._definitions import Workflow
from ._errors import InvalidArgument, WorkflowNotRegistered

__all__ = ["WorkflowRegistry"]


class WorkflowRegistry:
    """Workflow definitions by (name, version); new starts use the highest version."""

    def __init__(self, workflows: Iterable[Workflow[Any, Any]] = ()) -> None:
        self._by_key: dict[tuple[str, int], Workflow[Any, Any]] = {}
        for wf in workflows:
            self.add(wf)

    def add(self, wf: Workflow[Any, Any]) -> None:
        if not isinstance(wf, Workflow):
            raise InvalidArgument(f"expected a Workflow made with @flows.workflow, got {wf!r}")
        key = (wf.name, wf.version)
        existing = self._by_key.get(key)
        if existing is not None and existing is not wf:
            raise InvalidArgument(f"workflow {wf.name!r} version {wf.version} is registered twice")
        self._by_key[key] = wf

    def get(self, name: str, version: int) -> Workflow[Any, Any] | None:
        return self._by_key.get((name, version))

    def latest(self, name: str) -> Workflow[Any, Any]:
        versions = [wf for (n, _), wf in self._by_key.items() if n == name]
        if not versions:
            known = sorted({n for n, _ in self._by_key}) or ["none"]
            raise WorkflowNotRegistered(
                f"workflow {name!r} is not registered (registered: {', '.join(known)})"
            )
        return max(versions, key=lambda wf: wf.version)

    def keys(self) -> list[tuple[str, int]]:
        return sorted(self._by_key)

    def names(self) -> set[str]:
        return {name for name, _ in self._by_key}

    def __iter__(self) -> Any:
        return iter(self._by_key.values())
