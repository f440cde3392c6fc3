"""Builders for store-level contract tests: requests, events and commits by hand.

Everything a test creates lives under its own namespace (workflow names, activity
names, tenant, shard key), so tests stay independent on a shared database: claims
filter by workflow type, activity name and shard key, listings by tenant.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import msgspec

from flows_core.events import Event, SignalReceived, WorkflowStarted
from flows_core.store import (
    ActivityTaskClaim,
    ActivityTaskSpec,
    ClaimedTask,
    ClaimRequest,
    NewWorkflow,
    Store,
    TimerTaskSpec,
    WorkflowStatus,
    WorkflowTaskClaim,
    WorkflowTaskCommit,
)
from tests.contract.adapters import Adapter

LONG = timedelta(seconds=30)


def raw(value: Any) -> msgspec.Raw:
    return msgspec.Raw(msgspec.json.encode(value))


def decoded(value: msgspec.Raw | None) -> Any:
    return None if value is None else msgspec.json.decode(value)


def canon(events: Any) -> Any:
    """Events (one or a sequence) as plain JSON values, for comparisons across stores.

    Payloads are compared as JSON values, not bytes: a store may keep them as jsonb,
    which normalises spacing and key order.
    """
    if isinstance(events, list | tuple):
        return [canon(e) for e in events]
    return msgspec.json.decode(msgspec.json.encode(events))


class StoreProxy:
    """A store wrapper for fault injection and counting: subclasses replace the
    operations a test changes; ``clock`` and everything else go to the wrapped store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    @property
    def clock(self) -> Any:
        return self._store.clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


class Kit:
    """Per-test builders bound to one adapter's store."""

    def __init__(self, adapter: Adapter) -> None:
        self.adapter = adapter
        self.store: Store = adapter.store
        ns = adapter.ns
        self.ns = ns
        self.tenant = f"t-{ns}"
        self.other_tenant = f"u-{ns}"
        self.wf = f"wf-{ns}"
        self.act = f"act-{ns}"
        self.shard = f"wf-{ns}-shard-0"
        # A store that places workflows itself (Citus: the key follows from tenant and
        # id; the contract adapter uses tenant sharding) names the kit's shard.
        self.sharder = getattr(self.store, "sharder", None)
        if self.sharder is not None:
            self.shard = self.sharder.key_for(self.wf, "", self.tenant)
        self.shards_used = [self.shard]
        self._ids = 0

    def now(self) -> datetime:
        return self.store.clock.now()

    def new_id(self) -> str:
        self._ids += 1
        return f"w{self._ids}-{self.ns}"

    def new(
        self,
        workflow_id: str | None = None,
        *,
        tenant: str | None = None,
        name: str | None = None,
        version: int = 1,
        input: Any = None,
    ) -> NewWorkflow:
        tenant = tenant or self.tenant
        workflow_id = workflow_id or self.new_id()
        name = name or self.wf
        payload = raw({"n": 1} if input is None else input)
        shard = self.shard
        if self.sharder is not None:
            shard = self.sharder.key_for(name, workflow_id, tenant)
            if shard not in self.shards_used:
                self.shards_used.append(shard)
        return NewWorkflow(
            tenant_id=tenant,
            workflow_id=workflow_id,
            name=name,
            version=version,
            shard_key=shard,
            input=payload,
            started=WorkflowStarted(
                name=name,
                version=version,
                workflow_id=workflow_id,
                tenant_id=tenant,
                input=payload,
                seed=7,
                at=self.now(),
            ),
        )

    async def start(self, workflow_id: str | None = None, **kw: Any) -> NewWorkflow:
        new = self.new(workflow_id, **kw)
        await self.store.start_workflow(new)
        return new

    def signal(
        self, name: str = "go", payload: Any = None, signal_id: str | None = None
    ) -> SignalReceived:
        self._ids += 1
        return SignalReceived(
            name=name,
            payload=raw(payload),
            signal_id=signal_id or f"s{self._ids}-{self.ns}",
            at=self.now(),
        )

    async def claim(
        self,
        *,
        types: Sequence[tuple[str, int]] | None = None,
        acts: Sequence[str] = (),
        limit: int = 10,
        lease: timedelta = LONG,
        owner: str = "worker-a",
        shards: Sequence[str] | None = None,
    ) -> list[ClaimedTask]:
        return await self.store.claim(
            ClaimRequest(
                owner=owner,
                workflow_types=[(self.wf, 1)] if types is None else list(types),
                activity_names=list(acts),
                limit=limit,
                lease=lease,
                shard_keys=list(self.shards_used) if shards is None else list(shards),
            )
        )

    async def claim_wf(self, **kw: Any) -> WorkflowTaskClaim:
        """Claim exactly one workflow task (asserts it)."""
        kw.setdefault("acts", ())
        got = await self.claim(**kw)
        assert len(got) == 1, f"expected one workflow task, got {got}"
        claim = got[0]
        assert isinstance(claim, WorkflowTaskClaim)
        return claim

    async def claim_act(self, **kw: Any) -> ActivityTaskClaim:
        """Claim exactly one activity task (asserts it)."""
        kw.setdefault("types", [])
        kw.setdefault("acts", [self.act])
        got = await self.claim(**kw)
        assert len(got) == 1, f"expected one activity task, got {got}"
        claim = got[0]
        assert isinstance(claim, ActivityTaskClaim)
        return claim

    async def flushed_history(self, workflow_id: str, tenant: str | None = None) -> list[Event]:
        """The history once the inbox has moved in: claim the workflow tasks (which moves
        each one's inbox into its history), release them, and read the history."""
        for claim in await self.claim(acts=(), limit=100, owner="flusher"):
            await self.store.release(claim.lease)
        return await self.store.get_history(tenant or self.tenant, workflow_id)

    def commit(
        self,
        claim: WorkflowTaskClaim,
        events: list[Event],
        *,
        next_seq: int | None = None,
        status: WorkflowStatus = WorkflowStatus.RUNNING,
        output: Any = None,
        activity_tasks: list[ActivityTaskSpec] | None = None,
        timers: list[TimerTaskSpec] | None = None,
        drop_seqs: list[int] | None = None,
        **overrides: Any,
    ) -> WorkflowTaskCommit:
        fields: dict[str, Any] = {
            "lease": claim.lease,
            "claimed_history_length": len(claim.history),
            "expected_next_seq": claim.workflow.next_seq,
            "next_seq": claim.workflow.next_seq if next_seq is None else next_seq,
            "events": events,
            "status": status,
            "output": None if output is None else raw(output),
            "activity_tasks": activity_tasks or [],
            "timers": timers or [],
            "drop_seqs": drop_seqs or [],
        }
        fields.update(overrides)
        return WorkflowTaskCommit(**fields)
