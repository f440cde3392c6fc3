"""Shared pieces of the property tests: a program interpreter workflow, a driver that
runs one generated program on a TestEnvironment, and the history invariants.

A *program* is a JSON-able list of ops, so the single registered workflow
``prop-interp`` runs any of them:

* ``["act", key, mode]``   execute ``prop-act``; mode ok | fail1 | fail2 | always | terminal
* ``["sleep", seconds]``   durable timer
* ``["wait", name, timeout_or_null]``   wait_for_signal(name, str, timeout)
* ``["se", kind]``          side effect: now | random | uuid7
* ``["gather", [prog, prog, ...]]``   flows.gather of sub-programs
* ``["race", [prog, ...], timeout_or_null]``   flows.race of sub-programs (TimeoutError
  is caught and traced)
* ``["try", prog]``         run prog, catching ActivityFailed and Cancelled

The workflow returns its *trace*: what the code saw, in execution order.
"""

from __future__ import annotations

import asyncio
import os
import random
from collections import defaultdict
from datetime import timedelta
from typing import Any

import msgspec
from hypothesis import event
from hypothesis import strategies as st

import flows_core as flows
from flows_core import ActivityFailed, Cancelled, WorkflowNotRunning, replay
from flows_core.events import (
    ActivityCompleted,
    ActivityFailedEvent,
    ActivityScheduled,
    CancelRequested,
    Event,
    SideEffectRecorded,
    SignalReceived,
    SignalWaitStarted,
    StepCancelled,
    TimerFired,
    TimerStarted,
    WorkflowCancelledEvent,
    WorkflowCompleted,
    WorkflowFailedEvent,
    WorkflowStarted,
)
from flows_core.store import WorkflowStatus
from flows_memory import TestEnvironment

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "dev")
SCALE = {"ci": 1.0, "dev": 0.5, "long": 10.0}.get(PROFILE, 1.0)


def scaled(n: int) -> int:
    """Examples for a test: ``n`` in CI, fewer while developing, more on request."""
    return max(5, int(n * SCALE))


CASE_TIMEOUT = 15.0
"""Real seconds one generated case may take before it is declared hung."""

# -- the interpreter --------------------------------------------------------------------

MAX_ATTEMPTS = 3
ACTIVITY_DELAY = 0.003
SIGNAL_NAMES = ("a", "b")
CALLS: dict[tuple[str, int], list[int]] = defaultdict(list)
"""(workflow id, seq) -> attempt numbers of every execution of prop-act."""
ACTIVE = [0]
"""Number of prop-act executions in progress (a gate for external actions)."""
RUNS: dict[str, list[list[Any]]] = defaultdict(list)
"""workflow id -> the trace of every run of the workflow code (replays included)."""


class ActIn(msgspec.Struct):
    k: str
    mode: str


@flows.activity(
    "prop-act",
    retry=flows.RetryPolicy(
        initial_interval=timedelta(seconds=1), max_attempts=MAX_ATTEMPTS, jitter=0.0
    ),
)
async def prop_act(inp: ActIn) -> str:
    info = flows.activity_info()
    CALLS[(info.workflow_id, info.seq)].append(info.attempt)
    # A little real time, so signals and cancels land while a worker is mid-task.
    ACTIVE[0] += 1
    try:
        await asyncio.sleep(ACTIVITY_DELAY)
    finally:
        ACTIVE[0] -= 1
    if inp.mode == "terminal":
        raise flows.TerminalError("terminal failure")
    if inp.mode == "always":
        raise RuntimeError("always fails")
    if inp.mode.startswith("fail") and info.attempt <= int(inp.mode[4:]):
        raise ConnectionError(f"flaky attempt {info.attempt}")
    return f"ok:{inp.k}"


async def _run_prog(
    ctx: flows.WorkflowContext, prog: list[Any], path: str, trace: list[Any]
) -> None:
    for i, op in enumerate(prog):
        kind = op[0]
        here = f"{path}.{i}"
        try:
            if kind == "act":
                out = await ctx.execute(prop_act, ActIn(k=op[1], mode=op[2]))
                trace.append([here, "act", op[1], out])
            elif kind == "sleep":
                await ctx.sleep(timedelta(seconds=op[1]))
                trace.append([here, "sleep"])
            elif kind == "wait":
                timeout = None if op[2] is None else timedelta(seconds=op[2])
                got = await ctx.wait_for_signal(op[1], str, timeout=timeout)
                trace.append([here, "sig", op[1], got])
            elif kind == "se":
                if op[1] == "now":
                    value = ctx.now().isoformat()
                elif op[1] == "random":
                    value = repr(ctx.random())
                else:
                    value = str(ctx.uuid7())
                trace.append([here, "se", op[1], value])
            elif kind == "gather":
                await flows.gather(
                    *(_run_prog(ctx, sub, f"{here}g{j}", trace) for j, sub in enumerate(op[1]))
                )
                trace.append([here, "gathered"])
            elif kind == "race":
                timeout = None if op[2] is None else timedelta(seconds=op[2])
                branches = (
                    _run_prog(ctx, sub, f"{here}r{j}", trace) for j, sub in enumerate(op[1])
                )
                try:
                    won = await flows.race(*branches, timeout=timeout)
                except TimeoutError:
                    trace.append([here, "race-timeout"])
                else:
                    trace.append([here, "raced", won.winner])
            elif kind == "try":
                try:
                    await _run_prog(ctx, op[1], f"{here}t", trace)
                except (ActivityFailed, Cancelled) as exc:
                    trace.append([here, "caught", type(exc).__name__])
            else:  # pragma: no cover
                raise AssertionError(f"unknown op {op!r}")
        except ActivityFailed as exc:
            if kind == "act":
                trace.append([here, "act", op[1], f"failed:{exc.error_type}:{exc.attempts}"])
            raise
        except Cancelled:
            if kind not in ("gather", "race", "try"):
                trace.append([here, "cancelled", kind])
            raise


@flows.workflow("prop-interp")
async def interp(ctx: flows.WorkflowContext, prog: list[Any]) -> list[Any]:
    trace: list[Any] = []
    RUNS[ctx.workflow_id].append(trace)
    try:
        await _run_prog(ctx, prog, "m", trace)
    except Exception as exc:
        trace.append(["end", type(exc).__name__])
        raise
    trace.append(["end", "ok"])
    return trace


# -- generation -------------------------------------------------------------------------

_leaf = st.one_of(
    st.tuples(st.just("act"), st.sampled_from(["ok", "fail1", "fail2", "always", "terminal"])),
    st.tuples(st.just("sleep"), st.integers(1, 7200)),
    st.tuples(
        st.just("wait"), st.sampled_from(SIGNAL_NAMES), st.one_of(st.none(), st.integers(1, 900))
    ),
    st.tuples(st.just("se"), st.sampled_from(["now", "random", "uuid7"])),
)


def _ops(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return _leaf
    sub = st.lists(_ops(depth - 1), min_size=0, max_size=3)
    return st.one_of(
        _leaf,
        st.tuples(st.just("gather"), st.lists(sub, min_size=2, max_size=3)),
        st.tuples(
            st.just("race"),
            st.lists(sub, min_size=1, max_size=3),
            st.one_of(st.none(), st.integers(1, 900)),
        ),
        st.tuples(st.just("try"), sub),
    )


def _number(prog: list[Any], counter: list[int]) -> list[Any]:
    """Turn generated tuples into ops; give each activity a unique key naming its mode."""
    out: list[Any] = []
    for op in prog:
        if op[0] == "act":
            counter[0] += 1
            out.append(["act", f"k{counter[0]}-{op[1]}", op[1]])
        elif op[0] == "gather":
            out.append(["gather", [_number(p, counter) for p in op[1]]])
        elif op[0] == "race":
            out.append(["race", [_number(p, counter) for p in op[1]], op[2]])
        elif op[0] == "try":
            out.append(["try", _number(op[1], counter)])
        else:
            out.append(list(op))
    return out


programs = st.lists(_ops(2), min_size=1, max_size=5).map(lambda p: _number(p, [0]))

actions = st.lists(
    st.tuples(
        st.sampled_from(["signal:a", "signal:b", "cancel", "advance:6", "advance:600"]),
        st.one_of(st.just(0), st.integers(1, 25)),
    ),
    max_size=6,
)
"""External actions: (what, gate); each is sent once the history has ``gate`` events,
or, for gate 0, while an activity runs (a worker is mid-task); or as soon as the
workflow is stuck waiting for the outside. ``advance:n`` moves the virtual clock n
seconds at that point, under whatever the workers are doing."""


# -- the driver -------------------------------------------------------------------------


class Outcome(msgspec.Struct):
    workflow_id: str
    status: WorkflowStatus
    output: Any
    history: list[Event]
    sent: dict[str, list[str]]
    cancelled: bool
    advanced: bool
    """The clock was moved under running workers (leases may have expired mid-task)."""


async def _stuck(env: TestEnvironment) -> bool:
    return env.idle() and await env.store.next_due(None) is None


async def drive(env: TestEnvironment, prog: list[Any], schedule: list[Any]) -> Outcome:
    """Start ``prog``, send the scheduled signals/cancel, then nudge until it ends."""
    engine = env.engine
    run = await engine.start(interp, prog)
    wf_id = run.workflow_id
    sent: dict[str, list[str]] = {n: [] for n in SIGNAL_NAMES}
    cancelled = advanced = False
    serial = 0

    async def finished() -> bool:
        return (await run.query()).finished

    async def gate(threshold: int) -> None:
        quiet = 0
        while True:
            info = await run.query()
            if info.finished:
                return
            if (ACTIVE[0] > 0) if threshold == 0 else (info.history_length >= threshold):
                return
            quiet = quiet + 1 if await _stuck(env) else 0
            if quiet >= 3:
                return
            await asyncio.sleep(0.002)

    async def send(what: str) -> None:
        nonlocal cancelled, advanced, serial
        if what.startswith("advance:"):
            advanced = True
            # Move the clock under running workers: leases expire, timers fire mid-task.
            await env.advance(timedelta(seconds=int(what.split(":")[1])), wait_idle=False)
            return
        if what == "cancel":
            await engine.cancel(wf_id, reason="property test")
            cancelled = True
            return
        name = what.split(":")[1]
        serial += 1
        sig_id = f"{name}-{serial}"
        try:
            await engine.signal(wf_id, name, sig_id)
        except WorkflowNotRunning:
            return
        sent[name].append(sig_id)

    for what, threshold in schedule:
        await gate(threshold)
        if await finished():
            break
        await send(what)
    # Nudge a workflow stuck on a signal nobody sends: signals, then a cancel, then more.
    nudges = 0
    while not await finished():
        await gate(10**9)
        if await finished():
            break
        nudges += 1
        if nudges > 60:
            raise AssertionError(f"workflow {wf_id} does not finish: {prog!r}")
        if nudges == 20 and not cancelled:
            await send("cancel")
        else:
            await send(f"signal:{SIGNAL_NAMES[nudges % 2]}")
    await env.wait_idle(timeout=CASE_TIMEOUT)
    info = await run.query()
    history = await engine.history(wf_id)
    return Outcome(
        workflow_id=wf_id,
        status=info.status,
        output=info.output,
        history=history,
        sent=sent,
        cancelled=cancelled,
        advanced=advanced,
    )


async def run_case(
    prog: list[Any],
    schedule: list[Any],
    *,
    workers: int = 1,
    lease: timedelta = timedelta(seconds=30),
    fault_hook: Any = None,
    **options: Any,
) -> tuple[Outcome, TestEnvironment]:
    env = TestEnvironment(
        workflows=[interp],
        activities=[prop_act],
        workers=workers,
        lease=lease,
        fault_hook=fault_hook,
        **options,
    )
    async with env:
        try:
            out = await asyncio.wait_for(drive(env, prog, schedule), CASE_TIMEOUT)
        except TimeoutError:
            history = env.store._workflows and next(iter(env.store._workflows.values())).history
            raise AssertionError(
                f"case hung for {CASE_TIMEOUT}s; program {prog!r}, schedule {schedule!r}; "
                f"history so far: {[flows.event_summary(e) for e in history or []]}"
            ) from None
    return out, env


# -- invariants -------------------------------------------------------------------------

_COMMANDS = (ActivityScheduled, TimerStarted, SignalWaitStarted, SideEffectRecorded)
_TERMINALS = (WorkflowCompleted, WorkflowFailedEvent, WorkflowCancelledEvent)


def describe(history: list[Event]) -> str:
    return "\n".join(f"  {i + 1:3} {flows.event_summary(e)}" for i, e in enumerate(history))


def check_history(history: list[Event]) -> None:
    """Structural invariants every recorded history satisfies."""
    text = describe(history)
    assert history, "empty history"
    assert isinstance(history[0], WorkflowStarted), text
    assert sum(isinstance(e, WorkflowStarted) for e in history) == 1, text
    commands: dict[int, Event] = {}
    resolved: set[int] = set()
    fired: set[int] = set()
    dropped: set[int] = set()
    signal_ids: set[str] = set()
    last_seq = 0
    terminal_at: int | None = None
    for pos, e in enumerate(history):
        if isinstance(e, _COMMANDS):
            assert e.seq not in commands, f"seq #{e.seq} scheduled twice\n{text}"
            assert e.seq == last_seq + 1, f"seq #{e.seq} after #{last_seq}: not gap-free\n{text}"
            last_seq = e.seq
            commands[e.seq] = e
        elif isinstance(e, ActivityCompleted | ActivityFailedEvent):
            assert isinstance(commands.get(e.seq), ActivityScheduled), f"result of #{e.seq}\n{text}"
            assert e.seq not in resolved, f"activity #{e.seq} recorded twice\n{text}"
            resolved.add(e.seq)
        elif isinstance(e, TimerFired):
            cmd = commands.get(e.seq)
            assert isinstance(cmd, TimerStarted) or (
                isinstance(cmd, SignalWaitStarted) and cmd.timeout_at is not None
            ), f"TimerFired #{e.seq} without a timer\n{text}"
            assert e.seq not in fired, f"timer #{e.seq} fired twice\n{text}"
            fired.add(e.seq)
        elif isinstance(e, StepCancelled):
            assert e.seq in commands, f"StepCancelled #{e.seq} of no step\n{text}"
            assert e.seq not in dropped, f"step #{e.seq} cancelled twice\n{text}"
            dropped.add(e.seq)
        elif isinstance(e, SignalReceived):
            assert e.signal_id not in signal_ids, f"signal {e.signal_id} twice\n{text}"
            signal_ids.add(e.signal_id)
        elif isinstance(e, _TERMINALS):
            assert terminal_at is None, f"two terminal events\n{text}"
            terminal_at = pos
    assert sum(isinstance(e, CancelRequested) for e in history) <= 1, text
    if terminal_at is not None:
        # Events that arrive after the end stay out of the history.
        assert terminal_at == len(history) - 1, f"events after the end\n{text}"


def check_outcome(out: Outcome, prog: list[Any], *, faults: bool = False) -> None:
    """Everything a finished generated case must satisfy. ``faults``: store faults were
    injected, so claims of a step may have ended without its outcome recorded; each
    counts as an attempt (the one failure policy), and a step whose attempts they used
    up fails with ActivityTaskCrashed instead of its mode's result."""
    history, wf_id = out.history, out.workflow_id
    event(f"status={out.status.value}")
    if any(len(v) != len(set(v)) for k, v in CALLS.items() if k[0] == wf_id):
        event("an activity attempt ran more than once (duplicate delivery)")
    if any(isinstance(e, StepCancelled) for e in history):
        event("a step was cancelled")
    text = f"program {prog!r}\n{describe(history)}"
    assert out.status in (
        WorkflowStatus.COMPLETED,
        WorkflowStatus.FAILED,
        WorkflowStatus.CANCELLED,
    ), f"status {out.status}\n{text}"
    check_history(history)
    terminal = [e for e in history if isinstance(e, _TERMINALS)]
    assert len(terminal) == 1, text

    # Replay the final history: no new events, no divergence, same trace.
    runs_before = len(RUNS[wf_id])
    recorded_runs = [list(r) for r in RUNS[wf_id] if r and r[-1][0] == "end"]
    activation = replay(interp, history, history[-1].at)
    assert activation.park_error is None, f"{activation.park_error}\n{text}"
    assert activation.new_events == [], f"replay adds {activation.new_events}\n{text}"
    assert activation.finished, text
    replayed = RUNS[wf_id][runs_before]
    assert replayed in recorded_runs, f"replay saw {replayed}\nruns saw {recorded_runs}\n{text}"
    if out.status == WorkflowStatus.COMPLETED or (
        out.status == WorkflowStatus.CANCELLED and out.output is not None
    ):
        assert msgspec.json.decode(msgspec.json.encode(replayed)) == out.output, text
    end = replayed[-1][1]
    if out.status == WorkflowStatus.COMPLETED:
        assert end == "ok", text
    elif out.status == WorkflowStatus.CANCELLED:
        assert out.cancelled, text
        assert end in ("ok", "Cancelled"), text
    else:
        assert end != "ok", text

    # Side effects seen by the code are the recorded ones.
    seen = sorted(t[3] for t in replayed if t[1] == "se")
    recorded = sorted(e.value for e in history if isinstance(e, SideEffectRecorded))
    assert seen == recorded, text

    # Activities: recorded once, run at least once, results match their mode.
    scheduled = {e.seq for e in history if isinstance(e, ActivityScheduled)}
    for e in history:
        if isinstance(e, ActivityCompleted):
            assert e.attempt in CALLS[(wf_id, e.seq)], f"#{e.seq} attempt {e.attempt}\n{text}"
        elif isinstance(e, ActivityFailedEvent):
            assert CALLS[(wf_id, e.seq)], text
    if not out.advanced:
        # Without lease expiry mid-task there are no zombies: every execution belongs
        # to a step the history records. (A claimant whose lease expires while its
        # inline activity runs may have run a step the next claimant never takes.)
        for key in [k for k in CALLS if k[0] == wf_id]:
            assert key[1] in scheduled, f"activity ran for unscheduled #{key[1]}\n{text}"
    for t in replayed:
        if t[1] != "act":
            continue
        mode, result = t[2].split("-", 1)[1], t[3]
        if faults and result == f"failed:ActivityTaskCrashed:{MAX_ATTEMPTS}":
            event("store faults used up a step's attempts (ActivityTaskCrashed)")
            continue
        if mode in ("ok", "fail1", "fail2"):
            assert result == f"ok:{t[2]}", f"{t}\n{text}"
        elif mode == "always":
            assert result == f"failed:RuntimeError:{MAX_ATTEMPTS}", f"{t}\n{text}"
        else:
            assert result == "failed:TerminalError:1", f"{t}\n{text}"

    # A signal-wait timer that fires for a wait never dropped must be a timeout (the
    # wait returns None): a wait answered at once from the buffer drops its timer.
    # (A timer may still fire in a race with a signal the code has not yet seen; the
    # wait is then dropped after it.)
    wait_seqs = {e.seq for e in history if isinstance(e, SignalWaitStarted)}
    dropped = {e.seq for e in history if isinstance(e, StepCancelled)}
    woken = sum(
        1
        for e in history
        if isinstance(e, TimerFired) and e.seq in wait_seqs and e.seq not in dropped
    )
    timeouts = sum(1 for t in replayed if t[1] == "sig" and t[3] is None)
    assert woken == timeouts, f"{woken} wait timers fired, {timeouts} waits timed out\n{text}"

    # Signals: each consumed at most once, FIFO per name.
    for name in SIGNAL_NAMES:
        got = [t[3] for t in replayed if t[1] == "sig" and t[2] == name and t[3] is not None]
        assert len(got) == len(set(got)), f"signal consumed twice: {got}\n{text}"
        assert sorted(got, key=out.sent[name].index) == out.sent[name][: len(got)], (
            f"signals {name}: consumed {got}, sent {out.sent[name]}\n{text}"
        )
        by_path: dict[str, list[int]] = defaultdict(list)
        for t in replayed:
            if t[1] == "sig" and t[2] == name and t[3] is not None:
                branch = t[0].rsplit(".", 1)[0]
                by_path[branch].append(out.sent[name].index(t[3]))
        for branch, order in by_path.items():
            assert order == sorted(order), f"{name} out of order in {branch}: {order}\n{text}"


def seeded_faults(seed: int, rate: float, budget: int, ops: frozenset[str]) -> Any:
    """A fault hook raising ConnectionError at random before/after store writes."""
    rng = random.Random(seed)
    left = [budget]
    log: list[tuple[str, str]] = []

    def hook(op: str, when: str) -> None:
        if op not in ops or left[0] <= 0:
            return
        if rng.random() < rate:
            left[0] -= 1
            log.append((op, when))
            raise ConnectionError(f"injected fault {when} {op}")

    hook.log = log  # type: ignore[attr-defined]
    return hook
