"""Invariants every recorded workflow history must satisfy, whatever the adapter.

Reused by the contract suite, the property tests and the crash tests::

    from tests.contract.checks import assert_history_invariants, assert_record_matches

    history = await store.get_history(tenant, workflow_id)
    assert_history_invariants(history)
    assert_record_matches(await store.get_workflow(tenant, workflow_id), history)

Vocabulary (see ``flows_core.events``):

* a *command event* records that the workflow took step ``seq``: ActivityScheduled,
  TimerStarted, SignalWaitStarted, SideEffectRecorded. Replay allocates seqs 1, 2, 3...
  in the order the code takes steps, and every allocated seq gets its command event in
  the same commit, so command seqs appear in strictly increasing order, without gaps;
* a *resolution event* records the outcome of a step: ActivityCompleted /
  ActivityFailed (of an ActivityScheduled), TimerFired (of a TimerStarted, or of the
  timeout of a SignalWaitStarted that has one);
* StepCancelled drops a pending step (its task or timer is deleted in the same commit);
* terminal events: WorkflowCompleted / WorkflowFailed / WorkflowCancelled /
  WorkflowTerminated (written by terminate_workflow, from outside);
* the execution deadline (``start(..., execution_timeout=)``): the reserved step #0, a
  TimerStarted with seq 0 that the first workflow task records before any step of the
  code, resolved by a TimerFired with seq 0 when the deadline passes; the workflow then
  ends FAILED with error type WorkflowTimeout;
* *inbox events* come from outside the workflow's own decisions: SignalReceived,
  CancelRequested, and resolutions written by complete_activity / fire_due_timers.

Ordering rule (Store protocol): inbox events enter the history only when a workflow
task is claimed, after everything committed so far; commits append the code's
decisions. So an inbox event may legitimately follow a StepCancelled of its seq (a
timer fired, or a queued activity finished, while the task that dropped the step
ran), but nothing follows the terminal event: inbox events that arrive too late stay
in the inbox.

The checks themselves live in ``flows_core._fsck`` (``history_damage``,
``record_disagreements``), where ``flows fsck`` uses them too; these wrappers turn what
they find into assertion failures. The checks only read the list; positions are
implicit (event ``i`` is at position ``i + 1``), so a gap-free history is one whose
stored positions map onto list indexes.
Each failed check raises ``AssertionError`` with the offending position and a readable
dump of the history.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from flows_core._fsck import (
    COMMAND_TYPES,
    INBOX_TYPES,
    RESOLUTION_TYPES,
    TERMINAL_TYPES,
    format_history,
    history_damage,
    record_disagreements,
)
from flows_core.events import Event, event_summary
from flows_core.store import WorkflowRecord

__all__ = [
    "COMMAND_TYPES",
    "INBOX_TYPES",
    "RESOLUTION_TYPES",
    "TERMINAL_TYPES",
    "assert_append_only",
    "assert_history_invariants",
    "assert_record_matches",
    "command_events",
    "format_history",
    "resolutions_of",
]


def command_events(history: Sequence[Event]) -> dict[int, Event]:
    """The command event of each seq (assumes no seq is scheduled twice)."""
    return {e.seq: e for e in history if isinstance(e, COMMAND_TYPES)}


def resolutions_of(history: Sequence[Event], seq: int) -> list[Event]:
    """Every resolution event (ActivityCompleted/Failed, TimerFired) recorded for ``seq``."""
    return [e for e in history if isinstance(e, RESOLUTION_TYPES) and e.seq == seq]


def assert_history_invariants(
    history: Sequence[Event], *, contiguous_seqs: bool = True, terminal_last: bool = True
) -> None:
    """Assert the structural guarantees of one workflow's history (the rules are listed
    on ``flows_core._fsck.history_damage``)."""
    damage = history_damage(history, contiguous_seqs=contiguous_seqs, terminal_last=terminal_last)
    if damage is not None:
        where = f" at position {damage.position}" if damage.position is not None else ""
        raise AssertionError(
            f"history invariant broken{where}: {damage.message}\n{format_history(history)}"
        )


def assert_record_matches(record: WorkflowRecord, history: Sequence[Event]) -> None:
    """The cached row agrees with the history it is derived from (the rules are listed
    on ``flows_core._fsck.record_disagreements``)."""
    problems = record_disagreements(record, history)
    assert not problems, "; ".join(problems)


def assert_append_only(before: Sequence[Event], after: Sequence[Event]) -> None:
    """``after`` is ``before`` plus zero or more events.

    The history only ever grows (start, workflow-task claims moving the inbox in,
    commits), so this holds between any two reads.
    """
    assert len(after) >= len(before), f"history shrank from {len(before)} to {len(after)}"
    for pos, (old, new) in enumerate(zip(before, after, strict=False), start=1):
        assert msgspec.json.encode(old) == msgspec.json.encode(new), (
            f"event at position {pos} changed: {event_summary(old)!r} -> {event_summary(new)!r}"
        )
