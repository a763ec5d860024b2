"""The lines and tables of `launch status`, `list` and `schedule list` (pure).

`launch status` renders a JobStatus (launcher/status/model.py); `list` and `schedule list`
render the plain rows their commands made.
"""

from __future__ import annotations

import datetime
from typing import Sequence

from launcher.records import age, natural_key
from launcher.status.model import JobStatus, PodStatus
from launcher.status.timeline import duration

def head_line(s: JobStatus) -> str:
    """`ns/name: State  (restarts N, M retries left)`; a state that lags its running pods says both."""
    state = s.state
    if s.lagging:  # at 512+ pods the operator writes its Running condition well after the pods run
        state += f", all {s.running} pods Running (the operator has not updated the job's condition yet)"
    left = f", {s.retries_left} retries left" if s.retries_left is not None else ""
    return f"{s.namespace}/{s.name}: {state}  (restarts {s.restarts}{left})"


def summary_lines(s: JobStatus) -> list[str]:
    """The head of `launch status`: state, pods by phase, restarts by cause, the newest committed step."""
    phases: dict[str, int] = {}
    for p in s.pods:
        phases[p.phase or "Unknown"] = phases.get(p.phase or "Unknown", 0) + 1
    by_count = ", ".join(f"{n} {ph}" for ph, n in sorted(phases.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [head_line(s), f"  pods      {s.running}/{s.expected_pods} Running" + (
        f"  ({by_count})" if by_count and set(phases) != {"Running"} else "")]
    if s.causes:
        totals: dict[str, int] = {}
        for c in s.causes:
            key = f"exit {c.exit_code}" if c.exit_code is not None else (c.reason or c.cause)
            totals[key] = totals.get(key, 0) + (c.count if c.count is not None else 1)
        lines.append("  restarts  " + ", ".join(f"{n} {k}" for k, n in sorted(totals.items(), key=lambda kv: -kv[1])))
    progress = s.progress
    if progress.step is not None:
        text = f"  step      {progress.step} committed"
        if progress.at is not None:
            text += f" {age(progress.at, s.now)} ago"
        if progress.resumed_from is not None:
            text += f"; resumed from step {progress.resumed_from}"
        if progress.preempted_at is not None:
            text += f"; preempted at step {progress.preempted_at}"
        lines.append(text)
    if s.trainer is not None:
        lines.append("  trainer   " + trainer_line(s))
    return lines


def trainer_line(s: JobStatus) -> str:
    """What the runtime last posted to the TrainJob: `42% (step 126 of 300), 1m40s left; committed 120; posted 3s ago`."""
    t = s.trainer
    assert t is not None
    m = t.metrics
    parts = []
    if t.percent is not None:
        steps = f" (step {m['step']} of {m['total_steps']})" if "step" in m and "total_steps" in m else ""
        parts.append(f"{t.percent}%{steps}")
    elif "step" in m:
        parts.append(f"step {m['step']}")
    if t.eta_seconds is not None:
        parts[-1:] = [", ".join(parts[-1:] + [f"{duration(t.eta_seconds)} left"])]
    if "last_committed_step" in m:
        parts.append(f"committed {m['last_committed_step']}")
    if "goodput" in m:
        parts.append(f"goodput {m['goodput']}")
    if t.updated is not None:
        parts.append(f"posted {age(t.updated, s.now)} ago")
    return "; ".join(parts) or "posted nothing yet"


def pod_rows(pods: Sequence[PodStatus], *, all_pods: bool) -> list[list[str]]:
    """The per-pod table (unhealthy pods only unless all_pods), in natural order."""
    return [[p.replica, p.phase or "?", p.node or "-", str(p.restarts), p.problem or "-"]
            for p in sorted(pods, key=lambda p: natural_key(p.replica)) if all_pods or not p.healthy]


POD_HEADER = ["REPLICA", "PHASE", "NODE", "RESTARTS", "WHY"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths)] + [str(r[-1])]
        out.append(indent + "  ".join(cells).rstrip())
    return out


# --- `launch list` and `launch schedule list` ---------------------------------------


def job_rows(jobs: Sequence[dict], now: datetime.datetime, *, wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of `launch list`: name, state, pods, age (wide: created), newest first by name order.

    An ADMISSION column (Kueue's short state) only when a job is behind Kueue: other tables stay as they were.
    """
    kueue = any("admission" in j for j in jobs)
    header = ["NAME", "STATE"] + (["ADMISSION"] if kueue else []) + ["PODS", "AGE"] + (["CREATED"] if wide else [])
    rows = []
    for j in sorted(jobs, key=lambda j: natural_key(j["name"])):
        admitted = [(j.get("admission") or {}).get("summary") or "-"] if kueue else []
        row = [j["name"], j["state"], *admitted, str(j.get("pods", "-")), age(j.get("created"), now)]
        rows.append(row + ([j.get("created") or "-"] if wide else []))
    return header, rows


def schedule_rows(schedules: Sequence[dict], now: datetime.datetime, *,
                  wide: bool = False) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of `launch schedule list`: the three newest runs (wide: every run)."""
    header = ["NAME", "SCHEDULE", "SUSPENDED", "LAST SCHEDULE", "RUNS"]
    rows = []
    for r in sorted(schedules, key=lambda r: natural_key(r["name"])):
        when = r["schedule"] + (f" ({r['time_zone']})" if r.get("time_zone") else "")
        runs = r["runs"] if wide else r["runs"][-3:]
        shown = ", ".join(f"{j['name']} {j['state']}" for j in runs) or "no runs yet"
        last = age(r.get("last_schedule"), now) + " ago" if r.get("last_schedule") else "never"
        rows.append([r["name"], when, "yes" if r.get("suspended") else "no", last, shown])
    return header, rows


def render(header: Sequence[str], rows: Sequence[Sequence[str]], empty: str) -> str:
    """The table, or the one line saying there is nothing (kubectl's 'No resources found')."""
    return "\n".join(table(header, rows)) if rows else empty
