"""Give a package's public names their public ``__module__``, as httpx does.

Reprs, tracebacks, docs and pickles then name ``flows_core.Engine``, not the private
module it happens to live in (``flows_core._engine.Engine``), so moving code between
private modules changes nothing a user sees or has stored.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable
from typing import Any

__all__ = ["publish"]


def publish(package: str, namespace: dict[str, Any], names: Iterable[str]) -> None:
    """Set ``__module__`` to ``package`` on each class and function of ``names`` that
    is defined in one of ``package``'s private modules (``package._x``).

    A class's own postponed annotations are resolved first, in the module that defines
    them: ``typing.get_type_hints`` (and msgspec, which uses it) looks names up in the
    module ``__module__`` names, where the private module's imports are not.
    """
    private = f"{package}._"
    for name in names:
        obj = namespace[name]
        if not (isinstance(obj, type) or inspect.isfunction(obj)):
            continue
        if not obj.__module__.startswith(private):
            continue
        if isinstance(obj, type):
            _resolve_annotations(obj)
        obj.__module__ = package


def _resolve_annotations(cls: type) -> None:
    own: dict[str, Any] = inspect.get_annotations(cls)
    if not any(isinstance(value, str) for value in own.values()):
        return
    hints = typing.get_type_hints(cls, include_extras=True)
    cls.__annotations__ = {key: hints.get(key, value) for key, value in own.items()}
