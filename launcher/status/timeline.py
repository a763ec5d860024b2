"""A picture of a run from its restart ledger (pure): one bar per start, how it ended and why,
committed steps over wall time, the time each incident lost, goodput.

    tl = timeline.build(attempts, now)        # trainer.contract.Attempt records, any nodes
    timeline.text(tl)                         # lines for a terminal, at most 100 columns
    timeline.svg(tl)                          # a standalone SVG document (standard library only)

A bar is solid from its start to its last commit (time that ended in a committed step) and hatched
after it (work the next start ran again: the incident's cost). Committed steps are a step function
of time: each start resumes from `resumed_from`, each record's newest commit lands at `committed_at`;
the ledger keeps only the newest commit of a start, so the picture is exact at those points (dots in
the SVG) and drawn straight between them. The rules (how an attempt ended, lost time, goodput) are trainer.contract's.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterable
from xml.sax.saxutils import escape

from trainer import contract

WIDTH = 100
_MARK = {"finished": "✓", "preempted": "P", "failed": "X", "running": ">"}
_COLOR = {"finished": "#2e7d32", "preempted": "#f9a825", "failed": "#c62828", "running": "#1565c0"}
_KEPT = "#81c784"  # time that ended in a committed step
_SPARK = " ▁▂▃▄▅▆▇█"


@dataclasses.dataclass(frozen=True)
class Bar:
    node_rank: int
    number: int  # 1, 2, ... per node, in start order
    start: float
    end: float  # its recorded end, else the next start, else now (running)
    useful_until: float | None  # its last commit, when it committed a new step
    kind: str  # contract.attempt_end's: finished, preempted, failed, running
    code: int | None
    cause: str
    resumed_from: int | None
    committed: int | None
    seconds_lost: float | None
    steps_redone: int | None


@dataclasses.dataclass(frozen=True)
class Timeline:
    t0: float
    t1: float
    bars: tuple[Bar, ...]
    steps: tuple[tuple[float, int], ...]  # (time, newest committed step then), node 0's, in time order
    goodput: float | None
    lost: float  # seconds lost to node 0's incidents


def build(attempts: Iterable[contract.Attempt], now: float) -> Timeline:
    records = list(attempts)
    bars: list[Bar] = []
    for node in sorted({a.node_rank for a in records}):
        series = contract.node_series(records, node)
        summary = contract.summarize_ledger(series, now, node_rank=node)
        for n, (a, inc) in enumerate(zip(series, summary.incidents), 1):
            end = inc.ended_at if inc.ended_at is not None else now
            progressed = contract.made_progress(a, series[n] if n < len(series) else None)
            bars.append(Bar(node, n, a.started_at, max(end, a.started_at),
                            a.committed_at if progressed and a.committed_at is not None else None, inc.kind,
                            inc.code, inc.cause, inc.resumed_from, inc.committed, inc.seconds_lost,
                            inc.steps_redone))
    zero = [b for b in bars if b.node_rank == 0] or bars
    points: list[tuple[float, int]] = []
    for b in zero:
        points.append((b.start, b.resumed_from or 0))
        if b.useful_until is not None and b.committed is not None:
            points.append((b.useful_until, b.committed))
    steps, best = [], 0
    for t, s in sorted(points):
        best = max(best, s)
        steps.append((t, best))
    summary0 = contract.summarize_ledger(records, now, node_rank=zero[0].node_rank) if zero else None
    t0 = min((b.start for b in bars), default=now)
    t1 = max([b.end for b in bars] + [t0 + 1.0])
    return Timeline(t0, t1, tuple(bars), tuple(steps), summary0.goodput if summary0 else None,
                    sum(b.seconds_lost or 0.0 for b in zero if b.kind in ("preempted", "failed")))


def committed_at(tl: Timeline, t: float) -> float:
    """The committed step at time `t`, straight between the recorded points (each start, each newest commit)."""
    before = [(when, s) for when, s in tl.steps if when <= t]
    after = [(when, s) for when, s in tl.steps if when > t]
    if not before:
        return 0.0
    (ta, sa) = before[-1]
    if not after:
        return float(sa)
    tb, sb = after[0]
    return sa + (sb - sa) * (t - ta) / (tb - ta)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(round(seconds))
    return f"{s}s" if s < 120 else f"{s // 60}m{s % 60:02d}s" if s < 7200 else f"{s // 3600}h{(s % 3600) // 60:02d}m"


def headline(tl: Timeline) -> str:
    incidents = [b for b in tl.bars if b.node_rank == tl.bars[0].node_rank and b.kind in ("preempted", "failed")] \
        if tl.bars else []
    goodput = f"{tl.goodput:.0%}" if tl.goodput is not None else "-"
    return (f"goodput {goodput}, {len(tl.bars)} start(s) over {duration(tl.t1 - tl.t0)}, "
            f"{len(incidents)} incident(s), {duration(tl.lost)} lost")


def _ending(b: Bar) -> str:
    """`resumed→committed how, lost T`: the lost time is node 0's to tell (other nodes record no commits)."""
    how = {"finished": "finished", "running": "running"}.get(
        b.kind, f"{b.kind} ({'exit ' + str(b.code) if b.code is not None else 'killed'})")
    steps = f"{b.resumed_from or 0}→{'' if b.committed is None else b.committed}"
    lost = f" lost {duration(b.seconds_lost)}" if b.kind in ("preempted", "failed") and b.node_rank == 0 else ""
    return f"{steps} {how}{lost}"


def text(tl: Timeline, width: int = WIDTH) -> list[str]:
    """The terminal timeline: a headline, a time axis, one bar per start, committed steps as a sparkline."""
    label, tail = 7, 36
    cols = max(20, width - label - tail - 3)
    span = tl.t1 - tl.t0

    def col(t: float) -> int:
        return min(cols - 1, max(0, int((t - tl.t0) / span * cols)))

    out = ["timeline  " + headline(tl)]
    right = duration(span)
    out.append(" " * label + "|0s" + " " * max(1, cols - 3 - len(right)) + right + "|")
    for b in tl.bars:
        row = [" "] * cols
        a, z = col(b.start), col(b.end)
        u = col(b.useful_until) if b.useful_until is not None else a - 1
        for i in range(a, z + 1):
            # Only global rank 0 records commits: another node's bar shows that it ran, not what it kept.
            row[i] = "▒" if b.node_rank != 0 else "█" if i <= u else "░"
        row[z] = _MARK.get(b.kind, "?")
        out.append(f"n{b.node_rank} #{b.number:<2} "[:label].ljust(label) + "|" + "".join(row) + "| "
                   + _ending(b)[:tail])
    if tl.steps:
        top = max(s for _, s in tl.steps) or 1
        line = []
        for i in range(cols):
            s = committed_at(tl, tl.t0 + (i + 1) * span / cols)
            line.append(_SPARK[round(s / top * (len(_SPARK) - 1))])
        out.append("steps".ljust(label) + "|" + "".join(line) + f"| committed, up to {top}")
    out.append(" " * label + "█ kept (committed)  ░ lost  ▒ ran (other node)  ✓ finished  P preempted  X failed"
               "  > running")
    return [line.rstrip() for line in out]


def svg(tl: Timeline, title: str = "") -> str:
    """A standalone SVG of the same picture: bars, a committed-steps chart, the headline."""
    w, left, right, row = 1000, 90, 250, 26
    plot = w - left - right
    top = 60
    chart_h = 120
    h = top + row * len(tl.bars) + 40 + chart_h + 50
    span = tl.t1 - tl.t0

    def x(t: float) -> float:
        return left + (t - tl.t0) / span * plot

    e: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
        'font-family="DejaVu Sans, Helvetica, Arial, sans-serif" font-size="12">',
        '<defs><pattern id="lost" width="6" height="6" patternUnits="userSpaceOnUse" patternTransform="rotate(45)">'
        '<rect width="6" height="6" fill="#eeeeee"/><line x1="0" y1="0" x2="0" y2="6" stroke="#9e9e9e" '
        'stroke-width="3"/></pattern></defs>',
        f'<rect width="{w}" height="{h}" fill="white"/>',
        f'<text x="{left}" y="22" font-size="15" font-weight="bold">{escape(title or "restart ledger")}</text>',
        f'<text x="{left}" y="42">{escape(headline(tl))}</text>',
    ]
    for i in range(5):  # the time axis
        t = tl.t0 + span * i / 4
        e.append(f'<line x1="{x(t):.1f}" y1="{top - 6}" x2="{x(t):.1f}" y2="{top + row * len(tl.bars)}" '
                 'stroke="#e0e0e0"/>')
        e.append(f'<text x="{x(t):.1f}" y="{top + row * len(tl.bars) + 14}" text-anchor="middle" '
                 f'fill="#616161">{duration(t - tl.t0)}</text>')
    for i, b in enumerate(tl.bars):
        y = top + i * row
        e.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end">node {b.node_rank} #{b.number}</text>')
        useful = b.useful_until if b.useful_until is not None else b.start
        if useful > b.start:
            e.append(f'<rect x="{x(b.start):.1f}" y="{y + 4}" width="{max(1.0, x(useful) - x(b.start)):.1f}" '
                     f'height="{row - 8}" fill="{_KEPT}"/>')
        if b.end > useful:
            fill = 'url(#lost)" stroke="#9e9e9e' if b.node_rank == 0 else '#cfd8dc" stroke="#90a4ae'
            e.append(f'<rect x="{x(useful):.1f}" y="{y + 4}" width="{max(1.0, x(b.end) - x(useful)):.1f}" '
                     f'height="{row - 8}" fill="{fill}" stroke-width="0.5"/>')
        e.append(f'<rect x="{x(b.end) - 2:.1f}" y="{y + 2}" width="4" height="{row - 4}" '
                 f'fill="{_COLOR.get(b.kind, "#757575")}"/>')
        e.append(f'<text x="{w - right + 10}" y="{y + 16}">{escape(_ending(b))}<title>{escape(b.cause)}</title>'
                 '</text>')
    base = top + row * len(tl.bars) + 40 + chart_h
    e.append(f'<text x="{left - 8}" y="{base - chart_h + 10}" text-anchor="end">committed</text>')
    e.append(f'<text x="{left - 8}" y="{base - chart_h + 24}" text-anchor="end">step</text>')
    e.append(f'<line x1="{left}" y1="{base}" x2="{left + plot}" y2="{base}" stroke="#9e9e9e"/>')
    if tl.steps:
        peak = max(s for _, s in tl.steps) or 1
        pts = [(x(t), base - s / peak * chart_h) for t, s in tl.steps] + [(x(tl.t1), base - tl.steps[-1][1] / peak
                                                                            * chart_h)]
        e.append('<polyline points="' + " ".join(f"{px:.1f},{py:.1f}" for px, py in pts)
                 + '" fill="none" stroke="#1565c0" stroke-width="2"/>')
        e.extend(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="#1565c0"/>' for px, py in pts[:-1])
        e.append(f'<text x="{left + plot + 6}" y="{base - chart_h + 4}" fill="#1565c0">{peak}</text>')
        e.append(f'<text x="{left + plot + 6}" y="{base + 4}" fill="#1565c0">0</text>')
    legend = [(_KEPT, "kept"), ("#2e7d32", "finished"), ("#f9a825", "preempted"), ("#c62828", "failed"),
              ("#1565c0", "running")]
    lx = left
    for color, name in legend:
        e.append(f'<rect x="{lx}" y="{h - 22}" width="12" height="12" fill="{color}"/>'
                 f'<text x="{lx + 16}" y="{h - 12}">{name}</text>')
        lx += 30 + 7 * len(name)
    e.append(f'<rect x="{lx}" y="{h - 22}" width="12" height="12" fill="url(#lost)"/>'
             f'<text x="{lx + 16}" y="{h - 12}">lost (after the last commit)</text>')
    e.append(f'<rect x="{lx + 180}" y="{h - 22}" width="12" height="12" fill="#cfd8dc"/>'
             f'<text x="{lx + 196}" y="{h - 12}">ran (other nodes)</text>')
    e.append(f'<text x="{w - 10}" y="{h - 12}" text-anchor="end" fill="#9e9e9e">'
             f'{time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(tl.t0))}</text>')
    e.append("</svg>")
    return "\n".join(e) + "\n"
