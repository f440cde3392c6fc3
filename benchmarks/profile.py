"""Summarise a py-spy ``--format raw`` (collapsed stacks) profile."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame.strip())
    if not m:
        return frame.strip()
    path = m.group("file")
    for marker in ("site-packages/", "/work/main/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{m.group('func')}"


Shares = list[tuple[str, float]]


def summarize(path: Path, top: int = 20) -> tuple[int, Shares, Shares]:
    """(samples, top self-time frames, top inclusive frames), shares in percent."""
    self_t: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f]
        # drop the thread/process header frames py-spy puts first
        frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
    if not total:
        return 0, [], []

    def pct(c: Counter[str], keep: bool) -> list[tuple[str, float]]:
        items = [(k, 100.0 * v / total) for k, v in c.most_common()]
        if keep:
            items = [
                (k, v)
                for k, v in items
                if k.startswith(("flows_", "psycopg", "psycopg_pool", "msgspec", "uuid6"))
            ]
        return items[:top]

    return total, pct(self_t, False), pct(incl, True)


def markdown(path: Path, top: int = 20) -> str:
    total, self_top, incl_top = summarize(path, top)
    if not total:
        return "_profile: no samples_\n"
    out = [
        f"py-spy, {total} samples (on-CPU, GIL-holding and not).",
        "",
        "| self % | frame |",
        "|---:|---|",
    ]
    out += [f"| {v:.1f} | `{k}` |" for k, v in self_top]
    out += ["", "| inclusive % | frame (flows, psycopg, msgspec) |", "|---:|---|"]
    out += [f"| {v:.1f} | `{k}` |" for k, v in incl_top]
    return "\n".join(out) + "\n"
