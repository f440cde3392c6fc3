"""Flow control: concurrency slots and rate limits enforced in the store, shared by every
worker process.

Definitions carry the limits (``@flows.activity(..., max_concurrent=, concurrency_key=,
rate_limit=, rate_key=)``, ``@flows.workflow(..., max_running=)``): nothing is stored
about a limit but its usage, so a changed limit takes effect with the next claim.

A step with only a concurrency limit runs inline when the worker that scheduled it gets
a slot for it (held under the workflow task's lease, one per step); otherwise, and
always for a rate-limited step, it goes through the queue, and the worker that claims
its task asks the store (``flows_core.store.FlowLimits``) for a slot (and a rate token)
before running it. Each of these is a short transaction of its own. A slot is held by the
task's lease: it is given back when the attempt ends, and a slot whose holder's lease
ran out (the worker died) is taken over by the next claimant that finds the limit full.
A task that gets no slot or token is deferred (``defer_task``: uncounted, like a
release, visible again later): at the time its rate token is reserved for, or when a
slot is given back (the store wakes the oldest waiter), or at the latest after
``LIMIT_WAIT``. A workflow with ``max_running`` holds a slot from its first workflow
task until it ends (its holder is the workflow, alive while the workflow is not
terminal).
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

import msgspec

from ._codec import decode_payload
from ._errors import InvalidArgument
from .store import (
    ActivityTaskClaim,
    FlowLimits,
    Lease,
    LimitUsage,
    SlotHolder,
    Store,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)

__all__ = [
    "LIMIT_WAIT",
    "ActivityLimits",
    "LimitGate",
    "Rate",
    "activity_bucket",
    "limit_usage",
    "parse_rate",
    "workflow_bucket",
]

log = logging.getLogger("flows.worker")

LIMIT_WAIT: Final = timedelta(seconds=5)
"""The longest a task waits for a slot before it looks again (a wake-up may be lost)."""

RATE_HORIZON: Final = timedelta(seconds=60)
"""How far ahead a rate token may be reserved for a waiting task."""

_RATE: Final = re.compile(r"^\s*(\d+)\s*/\s*(s|m|h)\s*$")
_PER: Final = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}


@dataclass(frozen=True)
class Rate:
    """``count`` runs per ``per``: one token every ``interval``."""

    count: int
    per: timedelta

    @property
    def interval(self) -> timedelta:
        return self.per / self.count

    def __str__(self) -> str:
        unit = {1: "s", 60: "m", 3600: "h"}[int(self.per.total_seconds())]
        return f"{self.count}/{unit}"


def parse_rate(text: object, what: str) -> Rate:
    """``"100/s"``, ``"5/m"``, ``"1000/h"`` as a Rate; InvalidArgument otherwise."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if match is None or int(match.group(1)) < 1:
        raise InvalidArgument(
            f"{what} must look like '100/s', '5/m' or '1000/h' (a positive count per "
            f"second, minute or hour), got {text!r}"
        )
    return Rate(int(match.group(1)), _PER[match.group(2)])


def _check_key_fn(fn: object, what: str) -> Callable[[Any], Any] | None:
    if fn is not None and not callable(fn):
        raise InvalidArgument(f"{what} must be a function of the input, got {fn!r}")
    return fn


@dataclass(frozen=True)
class ActivityLimits:
    """The flow control of one activity (see ``flows.activity``)."""

    max_concurrent: int | None = None
    concurrency_key: Callable[[Any], Any] | None = None
    rate: Rate | None = None
    rate_key: Callable[[Any], Any] | None = None

    @classmethod
    def of(
        cls,
        name: str,
        max_concurrent: object,
        concurrency_key: object,
        rate_limit: object,
        rate_key: object,
    ) -> ActivityLimits | None:
        """The checked limits of activity ``name`` (None when it has none)."""
        what = f"activity {name!r}"
        key = _check_key_fn(concurrency_key, f"{what} concurrency_key")
        if max_concurrent is None and key is not None:
            max_concurrent = 1
        if max_concurrent is not None and (
            not isinstance(max_concurrent, int)
            or isinstance(max_concurrent, bool)
            or not 1 <= max_concurrent <= 10_000
        ):
            raise InvalidArgument(
                f"{what} max_concurrent must be an integer from 1 to 10000, got {max_concurrent!r}"
            )
        rate = None if rate_limit is None else parse_rate(rate_limit, f"{what} rate_limit")
        per_key = _check_key_fn(rate_key, f"{what} rate_key")
        if per_key is not None and rate is None:
            raise InvalidArgument(f"{what} has a rate_key but no rate_limit")
        if max_concurrent is None and rate is None:
            return None
        assert max_concurrent is None or isinstance(max_concurrent, int)
        return cls(max_concurrent, key, rate, per_key)


def check_max_running(name: str, max_running: object) -> int | None:
    if max_running is not None and (
        not isinstance(max_running, int)
        or isinstance(max_running, bool)
        or not 1 <= max_running <= 10_000
    ):
        raise InvalidArgument(
            f"workflow {name!r} max_running must be an integer from 1 to 10000, got {max_running!r}"
        )
    return max_running


def activity_bucket(name: str) -> str:
    """Where every limit row of activity ``name`` lives (the Citus distribution value)."""
    return f"a:{name}"


def workflow_bucket(name: str) -> str:
    return f"w:{name}"


def _keyed(kind: str, key: Any) -> str:
    return kind if key is None else f"{kind}:{key}"


@dataclass
class _Held:
    """Slots an admitted activity attempt holds (given back when it ends)."""

    bucket: str
    limit_key: str
    holder: SlotHolder


class LimitGate:
    """The worker's side of flow control: admits limited tasks or defers them."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.limits: FlowLimits | None = store if isinstance(store, FlowLimits) else None
        self.rng = random.Random()

    def check_supported(self, what: str) -> None:
        if self.limits is None:
            raise InvalidArgument(
                f"{what} has flow-control limits, but {type(self.store).__name__} does not "
                "enforce them (it lacks flows_core.store.FlowLimits)"
            )

    def _api(self) -> FlowLimits:
        assert self.limits is not None
        return self.limits

    # -- activities --

    async def admit_activity(
        self, claim: ActivityTaskClaim, limits: ActivityLimits, input_type: Any
    ) -> list[_Held] | None:
        """Take the slot and rate token ``claim`` needs: the held slots (to give back
        with ``leave``), or None if the task was deferred (nothing may run now)."""
        api = self._api()
        bucket = activity_bucket(claim.activity_name)
        value: Any = None
        if limits.concurrency_key is not None or limits.rate_key is not None:
            value = decode_payload(
                claim.input, input_type, what=f"input of activity {claim.activity_name!r}"
            )
        held: list[_Held] = []
        if limits.max_concurrent is not None:
            key = None if limits.concurrency_key is None else limits.concurrency_key(value)
            limit_key = _keyed("c", key)
            holder = task_holder(claim.lease)
            grant = await api.acquire_slot(bucket, limit_key, limits.max_concurrent, holder)
            if not grant.acquired:
                await self._defer(claim.lease, grant.retry_at, "concurrency", bucket, limit_key)
                return None
            held.append(_Held(bucket, limit_key, holder))
        if limits.rate is not None:
            key = None if limits.rate_key is None else limits.rate_key(value)
            limit_key = _keyed("r", key)
            ready = await api.take_rate_token(
                bucket, limit_key, limits.rate.interval, claim.lease.task_id, RATE_HORIZON
            )
            if ready is not None:
                await self.leave(held)
                reason = f"rate limit {limits.rate} of {bucket}"
                if key is not None:
                    reason += f" (key {key!r})"
                await api.defer_task(claim.lease, ready, f"waiting for a token of the {reason}")
                return None
        return held

    async def admit_inline(
        self,
        lease: Lease,
        name: str,
        seq: int,
        payload: msgspec.Raw,
        limits: ActivityLimits,
        input_type: Any,
    ) -> _Held | None:
        """A slot for step ``seq`` of activity ``name`` to run inline under the workflow
        task's ``lease`` (only concurrency limits: a rate-limited step is queued); None
        when there is none free now (the step then goes through the queue) or its key
        cannot be computed (its queued attempt reports why)."""
        assert limits.max_concurrent is not None
        assert limits.rate is None
        key = None
        if limits.concurrency_key is not None:
            try:
                value = decode_payload(payload, input_type, what=f"input of activity {name!r}")
                key = limits.concurrency_key(value)
            except Exception:
                return None
        bucket, limit_key = activity_bucket(name), _keyed("c", key)
        holder = msgspec.structs.replace(task_holder(lease), part=str(seq))
        grant = await self._api().acquire_slot(
            bucket, limit_key, limits.max_concurrent, holder, wait=False
        )
        return _Held(bucket, limit_key, holder) if grant.acquired else None

    async def leave(self, held: list[_Held]) -> None:
        for h in held:
            try:
                await self._api().release_slot(h.bucket, h.limit_key, h.holder)
            except Exception as exc:  # the slot frees itself when the lease runs out
                log.warning("slot of %s/%s not given back: %r", h.bucket, h.limit_key, exc)

    async def _defer(
        self,
        lease: Lease,
        retry_at: datetime | None,
        what: str,
        bucket: str,
        limit_key: str,
    ) -> None:
        now = self.store.clock.now()
        # spread the look-agains, so waiters do not all come back at once
        latest = now + LIMIT_WAIT * self.rng.uniform(0.8, 1.2)
        when = latest if retry_at is None else max(now, min(retry_at, latest))
        key = "" if limit_key in ("c", "r") else f" (key {limit_key[2:]!r})"
        reason = f"waiting for a {what} slot of {bucket}{key}"
        await self._api().defer_task(lease, when, reason)

    # -- workflows with max_running --

    async def admit_workflow(self, claim: WorkflowTaskClaim, max_running: int) -> bool:
        """Whether the workflow holds (or now took) one of its name's ``max_running``
        slots; if not, its task was deferred."""
        api = self._api()
        wf = claim.workflow
        bucket = workflow_bucket(wf.name)
        holder = workflow_holder(claim.lease)
        grant = await api.acquire_slot(bucket, "c", max_running, holder)
        if grant.acquired:
            return True
        await self._defer(claim.lease, grant.retry_at, "running", bucket, "c")
        return False

    async def workflow_ended(self, lease: Lease, name: str) -> None:
        """Give back the slot of a workflow that just ended (a crash before this is
        repaired by the next claimant that finds the holder ended)."""
        try:
            await self._api().release_slot(workflow_bucket(name), "c", workflow_holder(lease))
        except Exception as exc:
            log.warning("running slot of workflow %s not given back: %r", lease.workflow_id, exc)


def task_holder(lease: Lease) -> SlotHolder:
    """A slot held by a task's lease (alive while the task holds that lease)."""
    return SlotHolder(
        kind="task",
        tenant_id=lease.tenant_id,
        shard_key=lease.shard_key,
        workflow_id=lease.workflow_id,
        task_id=lease.task_id,
        token=lease.token,
        expires_at=lease.expires_at,
    )


def workflow_holder(lease: Lease) -> SlotHolder:
    """A slot held by a workflow (alive until the workflow ends); its workflow task is
    the one woken when a slot frees."""
    return SlotHolder(
        kind="workflow",
        tenant_id=lease.tenant_id,
        shard_key=lease.shard_key,
        workflow_id=lease.workflow_id,
        task_id=lease.task_id,
        token="",
        expires_at=lease.expires_at,
    )


def workflows_with_limits(workflows: Iterable[Any]) -> list[Any]:
    """The workflow definitions among ``workflows`` that have ``max_running``."""
    return [wf for wf in workflows if getattr(wf, "max_running", None) is not None]


async def limit_usage(store: Store) -> list[LimitUsage]:
    """The usage of the limits of what live workers serve (their registered activity
    and workflow names): [] for a store without FlowLimits."""
    if not isinstance(store, FlowLimits):
        return []
    workers = await store.list_workers()
    buckets = {activity_bucket(name) for w in workers for name in w.activity_names}
    buckets |= {workflow_bucket(name) for w in workers for name, _ in w.workflow_types}
    return await store.limit_usage(sorted(buckets))


# -- priorities --

PRIORITY_STEP: Final = timedelta(seconds=1)
"""One priority level is worth this much waiting: a task of priority p is claimed before
the tasks of priority 0 that became claimable less than p x PRIORITY_STEP before it,
and after those that waited longer (aging: nothing waits forever behind a stream of
urgent work)."""

MAX_PRIORITY: Final = 1000


ACTIVITY_PRIORITIES: Final[dict[str, int]] = {}
"""Activity name -> priority, of every activity defined in this process with one (the
worker that schedules a step may not serve the activity itself)."""


def check_priority(priority: object, what: str) -> int:
    if (
        not isinstance(priority, int)
        or isinstance(priority, bool)
        or not 0 <= priority <= MAX_PRIORITY
    ):
        raise InvalidArgument(
            f"{what} priority must be an integer from 0 (the default) to {MAX_PRIORITY} "
            f"(more urgent), got {priority!r}"
        )
    return priority


def priority_offset(priority: object) -> timedelta:
    """How far ahead in the claim order a task of ``priority`` goes."""
    return PRIORITY_STEP * check_priority(priority, "start")


def prioritized(commit: WorkflowTaskCommit) -> WorkflowTaskCommit:
    """``commit`` with the new tasks of activities that have a priority moved ahead in
    the claim order (claimable at once: their ``visible_at`` is in the past)."""
    specs = commit.activity_tasks
    if not ACTIVITY_PRIORITIES or not any(s.name in ACTIVITY_PRIORITIES for s in specs):
        return commit
    moved = []
    for spec in specs:
        priority = ACTIVITY_PRIORITIES.get(spec.name, 0)
        if priority and spec.visible_at is None and spec.scheduled_at is not None:
            ahead = spec.scheduled_at - PRIORITY_STEP * priority
            spec = msgspec.structs.replace(spec, visible_at=ahead)
        moved.append(spec)
    return msgspec.structs.replace(commit, activity_tasks=moved)


def runs_inline(limits: ActivityLimits | None) -> bool:
    """Whether a step of an activity with these limits may run inline (after taking its
    slot): no limit, or only a concurrency limit."""
    return limits is None or limits.rate is None
