"""The sticky cache: suspended workflow instances a worker keeps between workflow tasks.

After a workflow task commits and its workflow is still running, the worker keeps the
replayed ``WorkflowInstance`` here with the history length it committed (and the run's
marker, the seed of its WorkflowStarted). Every claim names the cached workflows
(``ClaimRequest.cached``), and the store returns only the events after the cached
length for them (``WorkflowTaskClaim.history_from``): the worker feeds those to the
cached instance and replays nothing. Anything else is a full replay: a workflow not
cached here (another worker ran it last, this worker restarted, the entry was evicted),
a history that does not continue the cached one (another run), a claim that came with
the whole history.

An entry is taken out of the cache while its workflow task runs and put back only after
the task's last commit succeeded with the workflow still running: a task that fails,
parks, loses its lease or finishes its workflow leaves no entry. The cache is bounded by
entries (``size``) and by the history lengths of the entries together (``max_events``,
a rough bound on memory); the least recently used entries go first.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from ._observe import TraceContext
from ._replay import WorkflowInstance
from .store import CachedHistory, ClaimedTask, WorkflowTaskClaim

__all__ = ["CachedWorkflow", "StickyCache"]

_Key = tuple[str, str]


@dataclass
class CachedWorkflow:
    """A suspended instance and the history it has seen (``hint.history_length``)."""

    instance: WorkflowInstance
    hint: CachedHistory
    trace_context: TraceContext | None


class StickyCache:
    """LRU cache of suspended workflow instances, keyed by (tenant id, workflow id).

    Counts ``sticky_hits`` (a task resumed a cached instance), ``sticky_misses`` (a
    task replayed the whole history), ``sticky_evictions`` (entries dropped for room) in
    ``counters``. ``size`` 0 disables it."""

    def __init__(self, size: int, max_events: int, counters: dict[str, int]) -> None:
        self.size = size
        self.max_events = max_events
        self.counters = counters
        for name in ("sticky_hits", "sticky_misses", "sticky_evictions"):
            counters.setdefault(name, 0)
        self._entries: OrderedDict[_Key, CachedWorkflow] = OrderedDict()
        self._events = 0
        """Sum of the entries' history lengths."""
        self._pinned: dict[str, CachedWorkflow] = {}
        """Entries taken out for claims that continue them, by lease token."""

    @property
    def enabled(self) -> bool:
        return self.size > 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def events(self) -> int:
        """The history events the entries hold together."""
        return self._events

    def hints(self) -> list[CachedHistory]:
        """What a claim sends (``ClaimRequest.cached``)."""
        return [entry.hint for entry in self._entries.values()]

    def pin(self, claims: Sequence[ClaimedTask]) -> None:
        """Take out at once the entries that claims just continued (so no eviction
        takes them before their tasks run); ``take`` finds them by lease token."""
        for claim in claims:
            if isinstance(claim, WorkflowTaskClaim) and claim.history_from > 0:
                entry = self._pop(_key(claim))
                if entry is not None:
                    self._pinned[claim.lease.token] = entry

    def unpin(self, claim: ClaimedTask) -> None:
        """Forget the entry pinned for a claim given back unrun."""
        if isinstance(claim, WorkflowTaskClaim):
            self._pinned.pop(claim.lease.token, None)

    def take(self, claim: WorkflowTaskClaim) -> CachedWorkflow | None:
        """The cached instance ``claim`` continues, taken out of the cache; None when
        the task must replay the whole history (the entry, if any, is dropped: the
        claim is the newer truth). A claim with ``history_from`` > 0 and None back
        needs the whole history read."""
        entry = self._pinned.pop(claim.lease.token, None)
        found = self._pop(_key(claim))
        entry = entry or found
        if not self.enabled:
            return None
        wf = claim.workflow
        if (
            entry is None
            or claim.history_from == 0
            or entry.hint.history_length != claim.history_from
            or claim.history_from + len(claim.history) != wf.history_length
            or entry.instance.definition.name != wf.name
            or entry.instance.definition.version != wf.version
        ):
            self.counters["sticky_misses"] += 1
            return None
        self.counters["sticky_hits"] += 1
        return entry

    def keep(
        self,
        claim: WorkflowTaskClaim,
        instance: WorkflowInstance,
        history_length: int,
        trace_context: TraceContext | None,
    ) -> None:
        """Cache ``instance``, suspended after a commit that left the history at
        ``history_length``; evicts the least recently used entries over the bounds."""
        if not self.enabled or history_length > self.max_events:
            return
        key = _key(claim)
        self._pop(key)
        hint = CachedHistory(
            tenant_id=claim.workflow.tenant_id,
            workflow_id=claim.workflow.workflow_id,
            shard_key=claim.workflow.shard_key,
            history_length=history_length,
            seed=instance.seed,
        )
        self._entries[key] = CachedWorkflow(instance, hint, trace_context)
        self._events += history_length
        while len(self._entries) > self.size or self._events > self.max_events:
            _, evicted = self._entries.popitem(last=False)
            self._events -= evicted.hint.history_length
            self.counters["sticky_evictions"] += 1

    def clear(self) -> None:
        self._entries.clear()
        self._pinned.clear()
        self._events = 0

    def _pop(self, key: _Key) -> CachedWorkflow | None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._events -= entry.hint.history_length
        return entry


def _key(claim: WorkflowTaskClaim) -> _Key:
    return (claim.workflow.tenant_id, claim.workflow.workflow_id)
