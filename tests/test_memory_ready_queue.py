"""The memory store's ready queue (FIFO for in-order arrivals, heap for the others)
gives its entries back in (when, order) order, however they arrived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from flows_memory._store import _ReadyQueue

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@given(
    st.lists(
        st.tuples(st.integers(0, 50), st.booleans()),
        max_size=60,
    )
)
def test_entries_come_out_in_when_order_order(ops: list[tuple[int, bool]]) -> None:
    queue = _ReadyQueue()
    kept: list[tuple[datetime, int]] = []
    out: list[tuple[datetime, int]] = []
    for order, (ms, pop) in enumerate(ops):
        entry: Any = (T0 + timedelta(milliseconds=ms), order, 0, None)
        queue.push(entry)
        kept.append(entry[:2])
        if pop:
            first = min(kept)
            assert queue.head()[:2] == first
            got = queue.pop()[:2]
            assert got == first
            kept.remove(got)
            out.append(got)
    while queue:
        got = queue.pop()[:2]
        assert got == min(kept)
        kept.remove(got)
    assert not kept
