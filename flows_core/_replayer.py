"""Replay check before deploy: replay stored or exported histories against the code.

``Replayer`` replays one history (an export file, JSON, or events) and reports where the
code no longer does what the history recorded; ``check_histories`` does it for the
histories of a store (the ``flows replay`` command); ``export_history`` and
``load_history`` write and read the export format (``flows export``)::

    {"format": 1, "tenant_id": "...", "workflow_id": "...", "name": "order",
     "version": 1, "status": "completed", "events": [<events as stored>]}
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Literal

import msgspec

from ._definitions import Activity, Workflow
from ._errors import (
    IllegalAwaitError,
    InvalidArgument,
    NonDeterminismError,
    PayloadError,
    WorkflowCodeError,
    WorkflowNotFound,
)
from ._registry import WorkflowRegistry
from ._replay import Activation, Divergence, PatchPath, WorkflowInstance
from .events import (
    Event,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowContinuedAsNew,
    WorkflowFailedEvent,
    WorkflowStarted,
    encode_event,
)
from .store import TERMINAL_STATUSES, ListQuery, Store, WorkflowRecord, WorkflowStatus

__all__ = [
    "HISTORY_FORMAT",
    "ExportedHistory",
    "PatchUsage",
    "ReplayProblem",
    "ReplayReport",
    "ReplayResult",
    "Replayer",
    "check_histories",
    "export_history",
    "load_history",
]

HISTORY_FORMAT: Final = 1
"""The version of the export format that ``export_history`` writes. ``load_history``
reads it and every earlier one (and a bare JSON array of events)."""

ProblemKind = Literal[
    "nondeterminism",
    "illegal_await",
    "code_error",
    "payload_error",
    "not_registered",
    "replay_error",
]


class ExportedHistory(msgspec.Struct, frozen=True, kw_only=True):
    """One workflow's history as ``flows export`` writes it: a header and the events as
    stored (each a JSON object tagged by ``type``)."""

    format: int = HISTORY_FORMAT
    tenant_id: str
    workflow_id: str
    name: str
    version: int
    status: str | None = None
    """The workflow's status when it was exported (None when unknown)."""
    events: list[Event]

    def to_json(self) -> bytes:
        """The export file's content: the header, then one event per line, each as
        stored (payloads byte for byte)."""
        head = _encoder.encode(msgspec.structs.replace(self, events=[]))
        assert head.endswith(b'"events":[]}'), head
        lines = b",\n".join(encode_event(event) for event in self.events)
        return head[: -len(b"[]}")] + b"[\n" + lines + b"\n]}\n"

    @classmethod
    def of(cls, events: Sequence[Event], *, status: str | None = None) -> ExportedHistory:
        """An export of ``events`` (a whole history: it starts with WorkflowStarted)."""
        started = _started(list(events))
        return cls(
            tenant_id=started.tenant_id,
            workflow_id=started.workflow_id,
            name=started.name,
            version=started.version,
            status=status,
            events=list(events),
        )


class _Header(msgspec.Struct):
    format: int


_encoder: Final = msgspec.json.Encoder()
_export_decoder: Final = msgspec.json.Decoder(ExportedHistory)
_header_decoder: Final = msgspec.json.Decoder(_Header)
_events_decoder: Final = msgspec.json.Decoder(list[Event])


def _started(events: list[Event]) -> WorkflowStarted:
    if not events or not isinstance(events[0], WorkflowStarted):
        first = type(events[0]).__name__ if events else "nothing"
        raise InvalidArgument(
            f"a history starts with WorkflowStarted; this one starts with {first}"
        )
    return events[0]


def load_history(data: bytes | str) -> ExportedHistory:
    """Read an export (``ExportedHistory.to_json``, ``flows export``), or a bare JSON
    array of stored events. Raises InvalidArgument naming what is wrong."""
    text = data.encode() if isinstance(data, str) else bytes(data)
    if text.lstrip()[:1] == b"[":
        try:
            events = _events_decoder.decode(text)
        except msgspec.DecodeError as exc:
            raise InvalidArgument(f"not a history (a JSON array of events): {exc}") from None
        return ExportedHistory.of(events)
    try:
        header = _header_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"not a history export (no integer 'format'): {exc}") from None
    if not 1 <= header.format <= HISTORY_FORMAT:
        raise InvalidArgument(
            f"history export format {header.format} is not known to this version of Flows "
            f"(it reads formats 1 to {HISTORY_FORMAT}): upgrade Flows to read it"
        )
    try:
        exported = _export_decoder.decode(text)
    except msgspec.DecodeError as exc:
        raise InvalidArgument(f"history export does not decode: {exc}") from None
    started = _started(exported.events)
    header_says = (exported.tenant_id, exported.workflow_id, exported.name, exported.version)
    events_say = (started.tenant_id, started.workflow_id, started.name, started.version)
    if header_says != events_say:
        raise InvalidArgument(
            f"history export header says (tenant, id, name, version) = {header_says}, "
            f"but its WorkflowStarted event says {events_say}"
        )
    return exported


async def export_history(store: Store, tenant_id: str, workflow_id: str) -> bytes:
    """The export file of one stored workflow (``flows export ID``). WorkflowNotFound if
    the store has no such workflow."""
    record = await store.get_workflow(tenant_id, workflow_id)
    events = await store.get_history(tenant_id, workflow_id)
    return ExportedHistory.of(events, status=str(record.status)).to_json()


@dataclass(frozen=True)
class ReplayProblem:
    """Why one history does not replay against the code: where (``step``, a sequence
    number, None when not at a step), what the history ``recorded`` there and what the
    code does ``now`` (each an event as JSON text, None when there is none)."""

    workflow_id: str
    tenant_id: str
    name: str
    version: int
    kind: ProblemKind
    message: str
    step: int | None = None
    recorded: str | None = None
    now: str | None = None

    def __str__(self) -> str:
        where = f" at step #{self.step}" if self.step is not None else ""
        lines = [
            f"workflow {self.workflow_id} (tenant {self.tenant_id}, {self.name} v{self.version}): "
            f"{self.kind}{where}: {self.message}"
        ]
        if self.recorded is not None or self.now is not None:
            lines.append(f"  recorded: {self.recorded or '(nothing)'}")
            lines.append(f"  now:      {self.now or '(nothing)'}")
        return "\n".join(lines)


@dataclass(frozen=True)
class ReplayResult:
    """The replay of one history against the code."""

    workflow_id: str
    tenant_id: str
    name: str
    version: int
    history_length: int
    problem: ReplayProblem | None
    """Why the history does not replay; None when it does."""
    new_events: list[Event] = field(default_factory=list)
    """What the code does beyond the history (empty for a history the code had caught
    up with: what a finished workflow's history always is)."""
    finished: bool = False
    """The code ended the workflow (as the history records, or in ``new_events``)."""
    patches: dict[str, PatchPath] = field(default_factory=dict)
    """The ``ctx.patched`` ids the run checked and its path through each: ``old``,
    ``new`` (marker in the history) or ``new_unrecorded`` (reached only now)."""

    @property
    def ok(self) -> bool:
        """The history replays against the code."""
        return self.problem is None

    def check(self) -> ReplayResult:
        """This result if the history replays; else raise NonDeterminismError (with the
        step, the recorded event and the code's) for a pytest failure that says why."""
        if self.problem is not None:
            raise NonDeterminismError(str(self.problem))
        return self


class Replayer:
    """Replays histories against workflow code: the check to run before a deploy, and
    in a test suite over golden histories the suite keeps::

        replayer = flows.Replayer(workflows=[order_v1, order_v2])
        replayer.replay_file("tests/golden/order-17.json").check()
    """

    def __init__(self, workflows: Iterable[Workflow[Any, Any] | Activity[Any, Any]]) -> None:
        self.registry = WorkflowRegistry(w for w in workflows if isinstance(w, Workflow))

    def replay(self, history: ExportedHistory | Sequence[Event]) -> ReplayResult:
        """Replay one whole history (it starts with WorkflowStarted)."""
        events = history.events if isinstance(history, ExportedHistory) else list(history)
        started = _started(events)
        definition = self.registry.get(started.name, started.version)
        result = _result_for(started, len(events))
        if definition is None:
            have = sorted((wf.name, wf.version) for wf in self.registry)
            known = ", ".join(f"{n} v{v}" for n, v in have) or "none"
            return result(
                problem=_problem(
                    started,
                    "not_registered",
                    f"workflow {started.name!r} v{started.version} is not in the code "
                    f"(it has: {known})",
                )
            )
        instance = WorkflowInstance(definition)
        try:
            activation = instance.apply(events, events[-1].at)
        except Exception as exc:  # a bug of replay itself: reported, not raised
            return result(problem=_problem(started, "replay_error", f"{type(exc).__name__}: {exc}"))
        return result(
            problem=_activation_problem(started, events, activation),
            new_events=activation.new_events,
            finished=activation.finished,
            patches=dict(instance.patch_paths),
        )

    def replay_json(self, data: bytes | str) -> ReplayResult:
        """Replay an export (or a JSON array of events); see ``load_history``."""
        return self.replay(load_history(data))

    def replay_file(self, path: str | os.PathLike[str]) -> ReplayResult:
        """Replay the export file at ``path``."""
        return self.replay_json(Path(path).read_bytes())


def _result_for(started: WorkflowStarted, length: int) -> Callable[..., ReplayResult]:
    def make(**kwargs: Any) -> ReplayResult:
        return ReplayResult(
            workflow_id=started.workflow_id,
            tenant_id=started.tenant_id,
            name=started.name,
            version=started.version,
            history_length=length,
            **kwargs,
        )

    return make


def _json(event: Event | None) -> str | None:
    return None if event is None else encode_event(event).decode()


def _problem(
    started: WorkflowStarted,
    kind: ProblemKind,
    message: str,
    divergence: Divergence | None = None,
) -> ReplayProblem:
    return ReplayProblem(
        workflow_id=started.workflow_id,
        tenant_id=started.tenant_id,
        name=started.name,
        version=started.version,
        kind=kind,
        message=message,
        step=divergence.seq if divergence else None,
        recorded=_json(divergence.recorded) if divergence else None,
        now=_json(divergence.taken) if divergence else None,
    )


_ENDINGS = (
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowCancelledEvent,
    WorkflowContinuedAsNew,
)


def _activation_problem(
    started: WorkflowStarted, events: list[Event], activation: Activation
) -> ReplayProblem | None:
    error = activation.park_error
    if error is not None:
        kind: ProblemKind
        if isinstance(error, IllegalAwaitError):
            kind = "illegal_await"
        elif isinstance(error, NonDeterminismError):
            kind = "nondeterminism"
        elif isinstance(error, WorkflowCodeError):
            kind = "code_error"
        else:
            kind = "replay_error"
        return _problem(started, kind, str(error), activation.divergence)
    ending = next((e for e in reversed(events) if isinstance(e, _ENDINGS)), None)
    if ending is not None and not activation.finished:
        # The run ended; the code now goes on past that end (or waits for something).
        first = activation.new_events[0] if activation.new_events else None
        step = getattr(first, "seq", None)
        doing = "takes a step the history does not have" if first else "does not end"
        return _problem(
            started,
            "nondeterminism",
            f"the history records the end of the run ({type(ending).__name__}); the code {doing}",
            Divergence(step, ending, first),
        )
    failed = next((e for e in activation.new_events if isinstance(e, WorkflowFailedEvent)), None)
    if failed is not None and failed.error.type == PayloadError.__name__:
        # The types of the code no longer read what the history holds (its input, an
        # activity's output, a signal): the code would now fail the run on it.
        return _problem(
            started,
            "payload_error",
            f"the code now fails the run: {failed.error.message}",
            Divergence(None, None, failed),
        )
    return None


@dataclass
class PatchUsage:
    """How the checked runs went through one ``ctx.patched`` id. ``running`` counts
    every run not ended (RUNNING or PARKED)."""

    patch_id: str
    old_running: int = 0
    old_finished: int = 0
    new_running: int = 0
    new_finished: int = 0

    @property
    def retire_ready(self) -> bool:
        """No checked run that took the old path is still running: the old path can go
        (``ctx.deprecate_patch``)."""
        return self.old_running == 0

    def __str__(self) -> str:
        old = self.old_running + self.old_finished
        new = self.new_running + self.new_finished
        head = (
            f"patch {self.patch_id!r}: old path {old} run(s) ({self.old_running} running), "
            f"new path {new} run(s) ({self.new_running} running): "
        )
        if self.retire_ready:
            return head + (
                f"no running run took the old path; it can be retired: replace "
                f"ctx.patched({self.patch_id!r}) by ctx.deprecate_patch({self.patch_id!r}) "
                "and drop the old path"
            )
        return head + f"keep it: {self.old_running} running run(s) took the old path"


@dataclass
class ReplayReport:
    """What ``check_histories`` found."""

    checked: int = 0
    """Histories replayed."""
    skipped: int = 0
    """Finished runs of a workflow version the code no longer has (nothing to replay)."""
    not_found: list[str] = field(default_factory=list)
    """Ids asked for (``ids=``) that the store does not have."""
    problems: list[ReplayProblem] = field(default_factory=list)
    patches: dict[str, PatchUsage] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """Every history checked replays against the code."""
        return not self.problems

    @property
    def exit_code(self) -> int:
        """The ``flows replay`` exit status: 1 when any history does not replay."""
        return 0 if self.ok else 1

    @property
    def histories_per_second(self) -> float:
        """Histories checked per second of the whole check (reads included)."""
        return self.checked / self.seconds if self.seconds > 0 else 0.0

    def text(self) -> str:
        """The report as ``flows replay`` prints it."""
        bad = len(self.problems)
        lines = [
            f"replayed {self.checked} histories in {self.seconds:.2f}s "
            f"({self.histories_per_second:.1f} histories/s): {self.checked - bad} ok, "
            f"{bad} with problems, {self.skipped} skipped (finished, version not in the code)"
        ]
        lines += [str(p) for p in self.problems]
        if self.not_found:
            lines.append(f"not found: {', '.join(self.not_found)}")
        lines += [str(self.patches[k]) for k in sorted(self.patches)]
        return "\n".join(lines)


async def check_histories(
    store: Store,
    workflows: Iterable[Workflow[Any, Any] | Activity[Any, Any]],
    *,
    tenant_id: str | None = None,
    names: Sequence[str] | None = None,
    statuses: Sequence[WorkflowStatus | str] | None = None,
    older_than: timedelta | None = None,
    newer_than: timedelta | None = None,
    ids: Sequence[str] | None = None,
    limit: int | None = None,
    page_size: int = 200,
    on_result: Callable[[ReplayResult], None] | None = None,
) -> ReplayReport:
    """Replay the store's histories against ``workflows`` (the code about to be
    deployed); the report lists every history that does not replay, and how the runs
    went through each patch. Filters: ``tenant_id`` (None: every tenant), workflow
    ``names``, ``statuses``, age (``older_than``/``newer_than``: created at least or
    at most that long ago by the store's clock), ``ids``, and at most ``limit``
    histories, newest first. ``on_result`` is called with each replay's result as it
    comes (progress, a verbose listing). A running (or parked) run of a workflow version the code
    does not have is a problem; a finished one is skipped. Uses the public Store
    protocol only (``list_workflows``, ``get_workflow``, ``get_history``), paging by
    offset: a workflow started during the check shifts the pages (what it pushes to the
    next page is replayed once), one pruned during it may be missed."""
    if limit is not None and limit < 1:
        raise InvalidArgument(f"limit must be at least 1, got {limit}")
    if page_size < 1:
        raise InvalidArgument(f"page_size must be at least 1, got {page_size}")
    wanted = [_status(s) for s in statuses] if statuses else None
    replayer = Replayer(workflows)
    report = ReplayReport()
    now = store.clock.now()
    oldest = now - newer_than if newer_than is not None else None
    newest = now - older_than if older_than is not None else None
    started = time.perf_counter()

    def selected(record: WorkflowRecord) -> bool:
        return (
            (names is None or record.name in names)
            and (wanted is None or record.status in wanted)
            and (oldest is None or record.created_at >= oldest)
            and (newest is None or record.created_at <= newest)
        )

    seen: set[tuple[str, str]] = set()
    async for record in _records(store, report, tenant_id, names, wanted, ids, page_size):
        if limit is not None and report.checked + report.skipped >= limit:
            break
        key = (record.tenant_id, record.workflow_id)
        if key in seen or not selected(record):
            continue
        seen.add(key)
        result = await _check_one(store, replayer, report, record)
        if result is not None and on_result is not None:
            on_result(result)
    report.seconds = time.perf_counter() - started
    return report


async def _records(
    store: Store,
    report: ReplayReport,
    tenant_id: str | None,
    names: Sequence[str] | None,
    statuses: list[WorkflowStatus] | None,
    ids: Sequence[str] | None,
    page_size: int,
) -> Any:
    """The candidate rows: the ids asked for, or pages of ``list_workflows``."""
    if ids is not None and tenant_id is not None:
        for workflow_id in ids:
            try:
                yield await store.get_workflow(tenant_id, workflow_id)
            except WorkflowNotFound:
                report.not_found.append(workflow_id)
        return
    missing = set(ids) if ids is not None else None
    found: set[str] = set()
    every_name: list[str | None] = list(names) if names else [None]
    every_status: list[WorkflowStatus | None] = list(statuses) if statuses else [None]
    for name in every_name:
        for status in every_status:
            offset = 0
            while True:
                page = await store.list_workflows(
                    ListQuery(
                        tenant_id=tenant_id,
                        name=name,
                        status=status,
                        limit=page_size,
                        offset=offset,
                    )
                )
                for record in page:
                    if missing is None or record.workflow_id in missing:
                        found.add(record.workflow_id)
                        yield record
                if len(page) < page_size:
                    break
                offset += page_size
    if missing is not None:
        report.not_found.extend(sorted(missing - found))


def _status(value: WorkflowStatus | str) -> WorkflowStatus:
    try:
        return WorkflowStatus(value)
    except ValueError:
        known = ", ".join(s.value for s in WorkflowStatus)
        raise InvalidArgument(f"unknown workflow status {value!r} (one of {known})") from None


async def _check_one(
    store: Store, replayer: Replayer, report: ReplayReport, record: WorkflowRecord
) -> ReplayResult | None:
    running = record.status not in TERMINAL_STATUSES
    if replayer.registry.get(record.name, record.version) is None and not running:
        report.skipped += 1
        return None
    try:
        events = await store.get_history(record.tenant_id, record.workflow_id)
    except WorkflowNotFound:  # pruned since it was listed
        return None
    result = replayer.replay(events)
    report.checked += 1
    if result.problem is not None:
        report.problems.append(result.problem)
    for patch_id, path in result.patches.items():
        usage = report.patches.setdefault(patch_id, PatchUsage(patch_id))
        if path == "old":
            if running:
                usage.old_running += 1
            else:
                usage.old_finished += 1
        elif running:
            usage.new_running += 1
        else:
            usage.new_finished += 1
    return result
