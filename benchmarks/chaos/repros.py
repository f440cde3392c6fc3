"""Minimal reproductions of library bugs found by the chaos suite.

``python -m benchmarks.chaos.repros`` runs each and says whether it still reproduces.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec

from flows_core.events import WorkflowCancelledEvent, decode_events, encode_event


def cancelled_output_does_not_decode() -> str | None:
    """A workflow that catches Cancelled, compensates and returns a value ends with
    ``WorkflowCancelledEvent(output=...)``; its stored history can no longer be decoded
    (``Engine.history``, ``flows history`` ...): msgspec does not take ``msgspec.Raw`` in
    a union, so ``output: msgspec.Raw | None`` only accepts null."""
    event = WorkflowCancelledEvent(output=msgspec.Raw(b'"compensated"'), at=datetime.now(UTC))
    stored = b"[" + encode_event(event) + b"]"
    try:
        decode_events(stored)
    except msgspec.ValidationError as exc:
        return f"decode_events({stored!r}) raises ValidationError: {exc}"
    return None


REPROS = [cancelled_output_does_not_decode]


def main() -> int:
    found = 0
    for repro in REPROS:
        result = repro()
        found += result is not None
        print(f"{repro.__name__}: {'REPRODUCES: ' + result if result else 'fixed'}")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
