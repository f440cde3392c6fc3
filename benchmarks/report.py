"""Markdown table, JSON dump and PNG chart of a benchmark run."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .common import Row


def _fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    a = abs(v)
    if a >= 1000:
        return f"{v:,.0f}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def table(rows: list[Row]) -> str:
    head = (
        "| scenario | adapter | case | metric | Flows | peer | peer value | Flows/peer "
        "| goal | met | notes |"
    )
    out = [head, "|---|---|---|---|---:|---|---:|---:|---|---|---|"]
    for r in rows:
        met = "" if r.met is None else ("yes" if r.met else "**no**")
        ratio = r.ratio
        out.append(
            f"| {r.scenario} | {r.adapter} | {r.case} | {r.metric} | {_fmt(r.value)} {r.unit} "
            f"| {r.peer} | {_fmt(r.peer_value)} | {_fmt(ratio) + 'x' if ratio else ''} "
            f"| {r.goal} | {met} | {r.note} |"
        )
    return "\n".join(out) + "\n"


def goals(rows: list[Row]) -> str:
    out = ["| goal | measured | met |", "|---|---|---|"]
    for r in rows:
        if r.met is None:
            continue
        desc = f"{r.scenario} / {r.adapter} / {r.case} / {r.metric}"
        ratio = f" (Flows/{r.peer} {_fmt(r.ratio)}x)" if r.ratio else ""
        out.append(
            f"| {r.goal} — {desc} | {_fmt(r.value)} {r.unit}{ratio} "
            f"| {'yes' if r.met else '**no**'} |"
        )
    return "\n".join(out) + "\n"


# The goals of issue 14: (goal, scenario, adapter, case prefix, metric, peer, test, how).
# ``how`` says what is compared: "value" (Flows' number) or "ratio" (Flows / peer).
GOALS: list[tuple[str, str, str, str, str, str, Any, str]] = [
    (
        ">= 1,000 wf/s at c=32",
        "a throughput",
        "postgres",
        "c=32 ",
        "workflows/s",
        "",
        lambda v: v >= 1000,
        "value",
    ),
    (
        ">= 10x DBOS at c=8",
        "a throughput",
        "postgres",
        "c=8 ",
        "workflows/s",
        "dbos",
        lambda v: v >= 10,
        "ratio",
    ),
    (
        ">= 10x DBOS at c=32",
        "a throughput",
        "postgres",
        "c=32 ",
        "workflows/s",
        "dbos",
        lambda v: v >= 10,
        "ratio",
    ),
    (
        ">= 5x absurd at c=8",
        "a throughput",
        "postgres",
        "c=8 ",
        "workflows/s",
        "absurd",
        lambda v: v >= 5,
        "ratio",
    ),
    (
        ">= 5x absurd at c=32",
        "a throughput",
        "postgres",
        "c=32 ",
        "workflows/s",
        "absurd",
        lambda v: v >= 5,
        "ratio",
    ),
    (
        "transactions per workflow <= 2 at c=8",
        "a throughput",
        "postgres",
        "c=8 ",
        "transactions/workflow",
        "",
        lambda v: v <= 2,
        "value",
    ),
    (
        "transactions per workflow <= 2 at c=32",
        "a throughput",
        "postgres",
        "c=32 ",
        "transactions/workflow",
        "",
        lambda v: v <= 2,
        "value",
    ),
    (
        "per-step p50 <= 0.5 ms",
        "b per-step",
        "postgres",
        "",
        "step p50",
        "",
        lambda v: v <= 0.5,
        "value",
    ),
    (
        "signal-to-resume p50 <= 12 ms at 20,000 history events",
        "h signal vs history",
        "postgres",
        "20,",
        "p50",
        "",
        lambda v: v <= 12,
        "value",
    ),
    (
        "signal latency flat against the history (p50 ratio <= 1.5)",
        "h signal vs history",
        "postgres",
        "p50 at",
        "ratio",
        "",
        lambda v: v <= 1.5,
        "value",
    ),
    (
        "Citus step p50 <= 3 ms",
        "b per-step",
        "citus",
        "",
        "step p50",
        "",
        lambda v: v <= 3,
        "value",
    ),
    (
        "Citus signal p50 <= 15 ms",
        "c signal-to-resume",
        "citus",
        "",
        "p50",
        "",
        lambda v: v <= 15,
        "value",
    ),
    (
        "Citus timer lateness p50 <= 25 ms",
        "d timer lateness",
        "citus",
        "",
        "p50",
        "",
        lambda v: v <= 25,
        "value",
    ),
    (
        "memory claim rate at a 100k backlog >= 0.8x (limit 1)",
        "f claim rate",
        "memory",
        "limit 1:",
        "ratio",
        "",
        lambda v: v >= 0.8,
        "value",
    ),
    (
        "memory claim rate at a 100k backlog >= 0.8x (limit 16)",
        "f claim rate",
        "memory",
        "limit 16:",
        "ratio",
        "",
        lambda v: v >= 0.8,
        "value",
    ),
]


def issue_goals(rows: list[Row]) -> str:
    """Every goal of issue 14: the measured value, met or missed (or not measured)."""
    out = ["| goal (issue 14) | measured | met |", "|---|---|---|"]
    for goal, scenario, adapter, case, metric, peer, test, how in GOALS:
        found = [
            r
            for r in rows
            if r.scenario == scenario
            and r.adapter == adapter
            and r.case.startswith(case)
            and r.metric == metric
            and (r.peer == peer or (not peer and how == "value"))
        ]
        if not found:
            out.append(f"| {goal} | not measured in this run | |")
            continue
        r = found[0]
        value = r.ratio if how == "ratio" else r.value
        if value is None:
            out.append(f"| {goal} | no {peer} figure | |")
            continue
        shown = f"{_fmt(value)}x ({_fmt(r.value)} vs {_fmt(r.peer_value)} {r.unit})"
        if how == "value":
            shown = f"{_fmt(value)} {r.unit} ({r.case})"
        out.append(f"| {goal} | {shown} | {'met' if test(value) else '**missed**'} |")
    return "\n".join(out) + "\n"


def info_block(info: dict[str, str]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items()) + "\n"


def chart(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    fig.suptitle(title, fontsize=10)

    def bars(ax: Any, picked: list[Row], label_of: Any, ttl: str, unit: str) -> None:
        if not picked:
            ax.set_title(ttl + " (not run)")
            ax.axis("off")
            return
        labels = [label_of(r) for r in picked]
        x = range(len(picked))
        has_peer = any(r.peer_value is not None for r in picked)
        w = 0.4 if has_peer else 0.7
        ax.bar(
            [i - (w / 2 if has_peer else 0) for i in x], [r.value for r in picked], w, label="Flows"
        )
        if has_peer:
            ax.bar(
                [i + w / 2 for i in x],
                [r.peer_value or 0 for r in picked],
                w,
                label="/".join(sorted({r.peer for r in picked if r.peer})),
            )
            ax.legend(fontsize=7)
        ax.set_xticks(list(x))
        ax.set_xticklabels(labels, fontsize=7, rotation=20, ha="right")
        ax.set_title(ttl, fontsize=9)
        ax.set_ylabel(unit, fontsize=8)

    tp = [r for r in rows if r.scenario == "a throughput" and r.metric == "workflows/s"]
    bars(
        axes[0][0],
        tp,
        lambda r: f"{r.adapter[:3]} {r.case.split()[0]} {r.peer}",
        "(a) throughput, 3-step workflow",
        "workflows/s",
    )
    xa = [r for r in rows if r.metric == "transactions/workflow"]
    bars(
        axes[0][1],
        xa,
        lambda r: f"{r.case.split()[0]} {r.peer}",
        "(a) transactions per workflow",
        "xact_commit / wf",
    )
    st = [r for r in rows if r.scenario == "b per-step" and r.metric.startswith("step p")]
    bars(axes[0][2], st, lambda r: f"{r.adapter[:3]} {r.metric}", "(b) per-step overhead", "ms")
    lat = [r for r in rows if r.scenario in ("c signal-to-resume", "d timer lateness")]
    bars(
        axes[1][0],
        lat,
        lambda r: f"{r.scenario[:1]} {r.adapter[:3]} {r.metric}",
        "(c) signal-to-resume, (d) timer lateness",
        "ms",
    )
    rp = [r for r in rows if r.scenario == "e replay" and r.metric == "replay time"]
    ax = axes[1][1]
    if rp:
        xs = [int(r.case.split()[0]) for r in rp]
        ax.loglog(xs, [r.value for r in rp], "o-", label="measured")
        ax.loglog(xs, [rp[0].value * x / xs[0] for x in xs], "--", label="linear")
        ax.legend(fontsize=7)
        ax.set_title("(e) replay time vs steps", fontsize=9)
        ax.set_xlabel("steps", fontsize=8)
        ax.set_ylabel("ms", fontsize=8)
    else:
        ax.axis("off")
    cl = [
        r
        for r in rows
        if r.scenario in ("f claim rate", "g processes") and r.unit in ("claims/s", "wf/s")
    ]
    bars(
        axes[1][2],
        cl,
        lambda r: f"{r.adapter[:3]} {r.case[:22]}",
        "(f) claims/s by backlog, (g) wf/s by processes",
        "per second",
    )
    axes[1][2].set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(
    rows: list[Row], info: dict[str, str], extra_md: str, out_dir: Path, stamp: str
) -> tuple[Path, Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    md_path = out_dir / f"bench-{stamp}.md"
    png_path = out_dir / f"bench-{stamp}.png"
    json_path = out_dir / f"bench-{stamp}.json"
    md = render(rows, info, extra_md, png_path.name)
    md_path.write_text(md)
    json_path.write_text(
        json.dumps({"info": info, "rows": [asdict(r) for r in rows]}, indent=1, default=str)
    )
    chart(
        rows,
        png_path,
        f"Flows benchmarks {stamp} — "
        + ", ".join(f"{k}={info[k]}" for k in ("cpus", "python", "pg.server_version") if k in info),
    )
    return md_path, png_path, json_path


def render(rows: list[Row], info: dict[str, str], extra_md: str, png_name: str = "") -> str:
    parts = [
        "# Flows benchmarks",
        "",
        "## Machine",
        "",
        info_block(info),
        "## Results",
        "",
        table(rows),
        "## Goals of issue 14",
        "",
        issue_goals(rows),
        "## Per-row goals",
        "",
        goals(rows),
    ]
    if extra_md:
        parts += [extra_md]
    if png_name:
        parts += ["", f"![chart]({png_name})", ""]
    return "\n".join(parts)
