"""Durable schedules: the spec, its ticks, and the scheduler every Worker runs.

A schedule starts one workflow per *tick*. Its ticks come from a cron expression
(parsed and iterated by ``cronsim``, in the schedule's IANA time zone through
``zoneinfo``, so DST is handled as cron does: a local time that does not exist that
day fires at the end of the gap, one that exists twice fires once, at its first
occurrence; an hourly job fires every real hour) or from an interval (``every``: ticks
at whole multiples of it since the Unix epoch, UTC).

Exactly one workflow per tick: the tick's workflow id is
``f"{schedule_id}@{tick:%Y-%m-%dT%H:%M:%SZ}"`` (UTC), started with ``start_workflow``,
whose WorkflowAlreadyExists means the tick already fired. Firing a claimed schedule is
starts (each workflow on its own shard, its own transaction) followed by one
``advance_schedule`` on the schedule's shard, fenced by the claim's lease: a scheduler
that dies in between leaves the schedule to the next claimant once the lease runs
out, which fires the same ticks again, harmlessly.

Catch-up (as Temporal does): after downtime, every missed tick whose fire time is at
most ``catchup_window`` old is taken, oldest first, each under the overlap policy;
older ones are skipped. Jitter: each tick fires a deterministic offset in
[0, jitter] after it, derived from the schedule id and the tick, so every worker agrees.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import secrets
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec
from cronsim import CronSim, CronSimError

from ._clock import Clock
from ._errors import InvalidArgument, WorkflowAlreadyExists, WorkflowNotFound
from ._sharding import Sharder, key_for
from .events import CancelRequested, WorkflowStarted
from .store import (
    TERMINAL_STATUSES,
    NewWorkflow,
    ScheduleAdvance,
    ScheduleClaim,
    ScheduleRecord,
    ScheduleStore,
    Store,
)

__all__ = [
    "Overlap",
    "ScheduleInfo",
    "ScheduleSpec",
    "fire_time",
    "schedule_store",
    "tick_workflow_id",
    "ticks_after",
]

log = logging.getLogger("flows.scheduler")

EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TICKS_PER_CLAIM: Final = 100
"""Ticks one claim of a schedule looks at (catch-up goes on at the next claim)."""
BUFFER_RECHECK: Final = (timedelta(seconds=1), timedelta(minutes=1))
"""How often a schedule holding a buffered tick looks whether its last run ended: as
long as the tick has waited, within these bounds (so the buffered run starts at most a
minute after the running one ended)."""
_MACROS: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}


class Overlap(StrEnum):
    """What a tick does while the schedule's last workflow still runs."""

    SKIP = "skip"
    """The tick is dropped (the default, as in Temporal)."""
    BUFFER_ONE = "buffer_one"
    """The tick waits until the running workflow ends (at most one waits; more are
    dropped)."""
    ALLOW_ALL = "allow_all"
    """The tick starts its workflow anyway."""
    CANCEL_RUNNING = "cancel_running"
    """The running workflow is asked to cancel, and the tick starts its workflow."""


class ScheduleSpec(msgspec.Struct, frozen=True, kw_only=True):
    """When a schedule fires: ``cron`` (5 fields, or @hourly/@daily/@weekly/@monthly/
    @yearly) in ``timezone`` (an IANA name), or ``every`` (a whole number of seconds,
    at least 1). ``jitter``: each tick fires up to this much later (a fixed offset per
    tick). ``catchup_window``: after downtime, missed ticks up to this old still fire
    (all of them, oldest first, under ``overlap``); older ones are skipped."""

    cron: str | None = None
    every: timedelta | None = None
    timezone: str = "UTC"
    jitter: timedelta = timedelta(0)
    catchup_window: timedelta = timedelta(days=365)
    overlap: Overlap = Overlap.SKIP

    def __post_init__(self) -> None:
        if (self.cron is None) == (self.every is None):
            raise InvalidArgument("a ScheduleSpec takes exactly one of cron= or every=")
        if self.cron is not None:
            _cron(self.cron, _zone(self.timezone))
        else:
            _zone(self.timezone)
        if self.every is not None:
            every = self.every
            if not isinstance(every, timedelta) or every < timedelta(seconds=1):
                raise InvalidArgument(f"every must be a timedelta of at least 1 s, got {every!r}")
            if every % timedelta(seconds=1):
                raise InvalidArgument(f"every must be a whole number of seconds, got {every}")
        if not isinstance(self.jitter, timedelta) or self.jitter < timedelta(0):
            raise InvalidArgument(f"jitter must be a timedelta >= 0, got {self.jitter!r}")
        window = self.catchup_window
        if not isinstance(window, timedelta) or window <= timedelta(0):
            raise InvalidArgument(f"catchup_window must be a positive timedelta, got {window!r}")
        if not isinstance(self.overlap, Overlap):
            raise InvalidArgument(f"overlap must be a flows.Overlap, got {self.overlap!r}")


class ScheduleInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What ``Engine.get_schedule`` and ``Engine.list_schedules`` tell about a schedule."""

    schedule_id: str
    tenant_id: str
    workflow_name: str
    workflow_version: int
    input: Any
    """The decoded JSON input each tick's workflow starts with."""
    spec: ScheduleSpec
    paused: bool
    next_fire_times: list[datetime]
    """The next few times it fires (jitter included; a pending trigger first), UTC."""
    last_tick_at: datetime | None = None
    last_workflow_id: str | None = None
    """The workflow of the last tick fired (what the overlap policy looks at)."""
    created_at: datetime | None = None
    updated_at: datetime | None = None

    @property
    def next_fire_at(self) -> datetime | None:
        """When it fires next (None if never or while paused)."""
        return None if self.paused or not self.next_fire_times else self.next_fire_times[0]


# -- ticks --


def _zone(name: object) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidArgument(f"timezone must be an IANA time zone name, got {name!r}")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidArgument(
            f"unknown time zone {name!r}: use an IANA name such as 'Europe/Paris' or 'UTC'"
        ) from None


def _cron(expression: object, zone: ZoneInfo) -> str:
    if not isinstance(expression, str):
        raise InvalidArgument(f"cron must be a string, got {expression!r}")
    text = _MACROS.get(expression.strip().lower(), expression.strip())
    try:
        CronSim(text, datetime.now(zone))
    except CronSimError as exc:
        raise InvalidArgument(f"bad cron expression {expression!r}: {exc}") from None
    return text


def ticks_after(spec: ScheduleSpec, after: datetime) -> Iterator[datetime]:
    """The spec's nominal ticks strictly after ``after``, in order, as UTC datetimes."""
    after = after.astimezone(UTC)
    if spec.every is not None:
        step = spec.every
        n = (after - EPOCH) // step + 1
        while True:
            yield EPOCH + n * step
            n += 1
    assert spec.cron is not None
    zone = ZoneInfo(spec.timezone)
    for tick in CronSim(_cron(spec.cron, zone), after.astimezone(zone)):
        yield tick.astimezone(UTC)


def _next_tick(spec: ScheduleSpec, after: datetime) -> datetime | None:
    return next(ticks_after(spec, after), None)


def jitter_offset(schedule_id: str, tick: datetime, jitter: timedelta) -> timedelta:
    """The fixed delay of ``tick`` in [0, jitter] (every worker computes the same)."""
    if jitter <= timedelta(0):
        return timedelta(0)
    digest = hashlib.sha256(tick_workflow_id(schedule_id, tick).encode()).digest()
    span = jitter // timedelta(microseconds=1)
    return timedelta(microseconds=int.from_bytes(digest[:8], "big") % (span + 1))


def fire_time(schedule_id: str, spec: ScheduleSpec, tick: datetime) -> datetime:
    """When ``tick`` fires: the tick plus its jitter offset."""
    return tick + jitter_offset(schedule_id, tick, spec.jitter)


def tick_workflow_id(schedule_id: str, tick: datetime) -> str:
    """The id of the workflow a tick (or a trigger at ``tick``) starts."""
    return f"{schedule_id}@{tick.astimezone(UTC):%Y-%m-%dT%H:%M:%SZ}"


def upcoming(record: ScheduleRecord, spec: ScheduleSpec, count: int = 5) -> list[datetime]:
    """The next ``count`` fire times of ``record`` (a pending trigger first)."""
    times: list[datetime] = []
    if record.trigger_at is not None:
        times.append(record.trigger_at)
    tick = record.next_tick_at
    if tick is not None:
        times.append(fire_time(record.schedule_id, spec, tick))
        for later in ticks_after(spec, tick):
            if len(times) >= count:
                break
            times.append(fire_time(record.schedule_id, spec, later))
    return times[:count]


def due_at(record_id: str, spec: ScheduleSpec, next_tick: datetime | None) -> datetime | None:
    return None if next_tick is None else fire_time(record_id, spec, next_tick)


_spec_encoder: Final = msgspec.json.Encoder()
_spec_decoder: Final = msgspec.json.Decoder(ScheduleSpec)


def encode_spec(spec: ScheduleSpec) -> msgspec.Raw:
    return msgspec.Raw(_spec_encoder.encode(spec))


def decode_spec(raw: msgspec.Raw) -> ScheduleSpec:
    return _spec_decoder.decode(bytes(raw))


def check_spec(spec: object) -> ScheduleSpec:
    if not isinstance(spec, ScheduleSpec):
        raise InvalidArgument(f"spec must be a flows.ScheduleSpec, got {spec!r}")
    return spec


def info(record: ScheduleRecord) -> ScheduleInfo:
    spec = decode_spec(record.spec)
    return ScheduleInfo(
        schedule_id=record.schedule_id,
        tenant_id=record.tenant_id,
        workflow_name=record.workflow_name,
        workflow_version=record.workflow_version,
        input=msgspec.json.decode(record.input),
        spec=spec,
        paused=record.paused,
        next_fire_times=upcoming(record, spec),
        last_tick_at=record.last_tick_at,
        last_workflow_id=record.last_workflow_id,
        created_at=record.created_at,
        updated_at=record.updated_at,
    )


def schedule_store(store: Store) -> ScheduleStore:
    """``store`` as a ScheduleStore, or InvalidArgument if it has no schedules."""
    if not isinstance(store, ScheduleStore):
        raise InvalidArgument(f"{type(store).__name__} does not support schedules")
    return store


# -- the scheduler (run by every Worker) --


class Scheduler:
    """Claims due schedules and fires their ticks (see the module docstring)."""

    def __init__(
        self,
        store: ScheduleStore,
        clock: Clock,
        sharder: Sharder,
        *,
        lease: timedelta,
        started: Any = None,
    ) -> None:
        self.store = store
        self.clock = clock
        self.sharder = sharder
        self.lease = lease
        self.started = started
        """Called with (workflow name, tenant id) for each workflow a tick started."""

    async def run_due(self, shard_keys: Sequence[str] | None, limit: int) -> int:
        """Claim up to ``limit`` due schedules and fire them; returns how many."""
        claims = await self.store.claim_schedules(shard_keys, limit=limit, lease=self.lease)
        for claim in claims:
            try:
                await self.fire(claim)
            except Exception:
                # the lease runs out and another claim fires the same ticks again
                log.exception("scheduler: firing schedule %r failed", claim.lease.schedule_id)
        return len(claims)

    async def fire(self, claim: ScheduleClaim) -> bool:
        """Fire the due ticks (and trigger, and buffered tick) of one claimed schedule,
        then advance it. False if the lease was lost before the advance."""
        row = claim.schedule
        spec = decode_spec(row.spec)
        state = _Firing(self, row, spec)
        now = self.clock.now()
        if row.buffered_tick_at is not None and not await state.running():
            tick, state.buffered = row.buffered_tick_at, None
            await state.start(tick)
        trigger = row.trigger_at
        if trigger is not None:  # a request to fire now (its time, the client's, names it)
            await state.tick(trigger)
            trigger = None
        next_tick = row.next_tick_at
        looked = 0
        while next_tick is not None and looked < MAX_TICKS_PER_CLAIM and not row.paused:
            fires = fire_time(row.schedule_id, spec, next_tick)
            if fires > now:
                break
            if now - fires > spec.catchup_window:
                # skip straight past every tick too old to fire (a long downtime)
                horizon = now - spec.catchup_window - spec.jitter - timedelta(microseconds=1)
                later = _next_tick(spec, horizon)
                if later is not None and later > next_tick:
                    next_tick = later
                    continue
            else:
                await state.tick(next_tick)
            state.last_tick = next_tick
            next_tick = _next_tick(spec, next_tick)
            looked += 1
        due = due_at(row.schedule_id, spec, next_tick)
        if looked >= MAX_TICKS_PER_CLAIM:
            due = now  # more to catch up: at the next claim
        if trigger is not None:
            due = trigger if due is None else min(due, trigger)
        if state.buffered is not None:
            low, high = BUFFER_RECHECK
            recheck = now + min(max(now - state.buffered, low), high)
            due = recheck if due is None else min(due, recheck)
        return await self.store.advance_schedule(
            ScheduleAdvance(
                lease=claim.lease,
                revision=row.revision,
                next_tick_at=next_tick,
                due_at=due,
                trigger_at=trigger,
                last_tick_at=state.last_tick,
                last_workflow_id=state.last_workflow,
                buffered_tick_at=state.buffered,
            )
        )

    def new_workflow(self, row: ScheduleRecord, tick: datetime) -> NewWorkflow:
        workflow_id = tick_workflow_id(row.schedule_id, tick)
        started = WorkflowStarted(
            name=row.workflow_name,
            version=row.workflow_version,
            workflow_id=workflow_id,
            tenant_id=row.tenant_id,
            input=row.input,
            seed=secrets.randbits(63),
            at=self.clock.now(),
        )
        return NewWorkflow(
            tenant_id=row.tenant_id,
            workflow_id=workflow_id,
            name=row.workflow_name,
            version=row.workflow_version,
            shard_key=key_for(self.sharder, row.workflow_name, workflow_id, row.tenant_id),
            input=row.input,
            started=started,
        )


class _Firing:
    """The state of one schedule while its claim fires ticks."""

    def __init__(self, scheduler: Scheduler, row: ScheduleRecord, spec: ScheduleSpec) -> None:
        self.scheduler = scheduler
        self.row = row
        self.spec = spec
        self.last_tick = row.last_tick_at
        self.last_workflow = row.last_workflow_id
        self.buffered = row.buffered_tick_at
        self._running: bool | None = None

    async def running(self) -> bool:
        """Whether the last fired workflow still runs (one read, then remembered)."""
        if self._running is None:
            self._running = False
            if self.last_workflow is not None:
                store: Any = self.scheduler.store
                try:
                    record = await store.get_workflow(self.row.tenant_id, self.last_workflow)
                    self._running = record.status not in TERMINAL_STATUSES
                except WorkflowNotFound:
                    pass
        return self._running

    async def tick(self, tick: datetime) -> None:
        """A tick (or trigger) under the overlap policy."""
        overlap = self.spec.overlap
        if overlap != Overlap.ALLOW_ALL and await self.running():
            if overlap == Overlap.SKIP:
                return
            if overlap == Overlap.BUFFER_ONE:
                if self.buffered is None:
                    self.buffered = tick
                return
            assert self.last_workflow is not None
            await self._cancel(self.last_workflow)
        await self.start(tick)

    async def start(self, tick: datetime) -> None:
        scheduler = self.scheduler
        new = scheduler.new_workflow(self.row, tick)
        store: Any = scheduler.store
        try:
            await store.start_workflow(new)
            if scheduler.started is not None:
                scheduler.started(new.name, new.tenant_id)
        except WorkflowAlreadyExists:
            pass  # this tick fired before (a scheduler died before advancing)
        self.last_workflow = new.workflow_id
        self._running = True

    async def _cancel(self, workflow_id: str) -> None:
        store: Any = self.scheduler.store
        request = CancelRequested(
            reason=f"schedule {self.row.schedule_id!r}: a new tick (overlap cancel_running)",
            at=self.scheduler.clock.now(),
        )
        with contextlib.suppress(WorkflowNotFound):
            await store.cancel_workflow(self.row.tenant_id, workflow_id, request)


def new_record(
    *,
    tenant_id: str,
    schedule_id: str,
    shard_key: str,
    workflow_name: str,
    workflow_version: int,
    input: msgspec.Raw,
    spec: ScheduleSpec,
    paused: bool,
    now: datetime,
) -> ScheduleRecord:
    """A new schedule row: its first tick is the first one after ``now``."""
    next_tick = _next_tick(spec, now)
    return ScheduleRecord(
        tenant_id=tenant_id,
        schedule_id=schedule_id,
        shard_key=shard_key,
        workflow_name=workflow_name,
        workflow_version=workflow_version,
        input=input,
        spec=encode_spec(spec),
        paused=paused,
        next_tick_at=next_tick,
        due_at=due_at(schedule_id, spec, next_tick),
    )


def replanned(
    record: ScheduleRecord, spec: ScheduleSpec, now: datetime, **changes: Any
) -> ScheduleRecord:
    """``record`` with ``changes`` and ticks counted anew from ``now``."""
    next_tick = _next_tick(spec, now)
    due = due_at(record.schedule_id, spec, next_tick)
    trigger = changes.get("trigger_at", record.trigger_at)
    if trigger is not None:
        due = trigger if due is None else min(due, trigger)
    return msgspec.structs.replace(
        record, spec=encode_spec(spec), next_tick_at=next_tick, due_at=due, **changes
    )
