"""Pure functions behind `launch status`, `list` and `schedule list`: counting, summarising, tables.

No I/O here: launcher/k8s/status.py reads the cluster (one list call per kind) and turns what it
read into the plain records these functions take:

    pod   {"name", "uid", "owner_uid", "replica", "phase", "node", "deleting", "ready",
           "exit_code", "waiting" (reason: message), "unschedulable" (the scheduler's message)}
    event {"kind", "name", "uid", "reason", "message", "count", "type", "created" (datetime)}
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Iterable, Sequence

from launcher import backends
from trainer import contract

#: Events that a pod gets once, when it comes into being: the scheduler placing it or failing to.
#: Every incarnation of a replica (the operator reuses the name) has its own UID on them.
POD_BIRTH_REASONS = ("Scheduled", "FailedScheduling")

#: Why a pod went away other than by exiting, by the reason of the event on the pod. The
#: operator recreates it (same name); like a Job's disruptions, it does not spend the retry budget.
POD_LOSS_CAUSES = {
    "TaintManagerEviction": "evicted: its node was tainted NoExecute (not ready, unreachable, out of service)",
    "NodeNotReady": "its node became not ready",  # context: the eviction that follows is the loss
    "Preempted": "preempted by a higher-priority pod",
    "Evicted": "evicted by the kubelet (node pressure)",
}
NOT_A_LOSS = {"NodeNotReady"}
HEALTHY_PHASES = ("Running", "Succeeded")


def natural_key(text: str) -> list:
    """Sort key that orders digits by value: worker-2 before worker-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def own_pods(job_uid: str, pods: Iterable[dict]) -> list[dict]:
    """The pods this job owns: a deleted job's pods of the same name, still going, are not its own."""
    return [p for p in pods if p.get("owner_uid") in (None, job_uid)]


def incarnation_key(spec_names: set[str] | frozenset[str], pod_name: str) -> str:
    """The replica name a pod is an incarnation of: its own where the controller reuses it (a PyTorchJob's
    master-0), else the spec name its Job's random suffix extends (a TrainJob's <job>-node-0-1-x7k2p)."""
    if pod_name in spec_names:
        return pod_name
    base = pod_name.rsplit("-", 1)[0]
    return base if base in spec_names else pod_name


def pod_incarnations(job: dict, pods: Sequence[dict], pod_events: Sequence[dict]) -> dict[str, set[str]]:
    """Each replica's pod UIDs over the job's life: its pods now, and the UIDs its pods' events name.

    Keyed by incarnation_key. Only UIDs of birth events (POD_BIRTH_REASONS) created at or after the
    job count, and a UID seen on any event older than the job belongs to an earlier job of the same
    name. Events are never summed: UIDs are, and no event merges two UIDs. Kubernetes keeps events
    an hour, so a replica recreated longer ago than that counts from its pods since.
    """
    uid, created = job["metadata"].get("uid"), parse_time(job["metadata"].get("creationTimestamp"))
    spec = backends.of(job).replica_names(job)
    out: dict[str, set[str]] = {n: set() for n in spec}
    for p in own_pods(uid, pods):
        out.setdefault(incarnation_key(spec, p["name"]), set()).add(p["uid"])
    older = {e["uid"] for e in pod_events if created is not None and e.get("created") is not None
             and e["created"] < created}
    for e in pod_events:
        key = incarnation_key(spec, e["name"])
        if (e.get("kind") in (None, "Pod") and key in out and e.get("uid") and e["uid"] not in older
                and e["reason"] in POD_BIRTH_REASONS):
            out[key].add(e["uid"])
    return out


def count_restarts(incarnations: dict[str, set[str]]) -> dict[str, int]:
    """Restarts per pod name: its incarnations less the first."""
    return {name: max(len(uids) - 1, 0) for name, uids in incarnations.items()}


def restart_causes(job: dict, job_events: Sequence[dict], pod_events: Sequence[dict],
                   incarnations: dict[str, set[str]]) -> list[dict]:
    """Each distinct reason a pod of the job ended early: its exit code's meaning, an eviction, a preemption.

    Exits come from the operator's events on this job (by UID); losses from events on this job's pods (by UID).
    """
    name, uid = job["metadata"]["name"], job["metadata"].get("uid")
    prefix = name + "-"
    causes: dict[tuple[str, str], dict] = {}
    for e in job_events:
        if uid and e.get("uid") not in (None, uid):
            continue
        exited = backends.of(job).exit_event(e)
        if exited and exited[1] != 0:
            pod, code = exited
            cause = f"exit {code}: {contract.describe_exit_code(code)}"
            causes.setdefault((pod, cause), {"pod": pod, "cause": cause, "exit_code": code,
                                             "retried": contract.is_retryable(code)})
    own_uids = {u for uids in incarnations.values() for u in uids}
    created = parse_time(job["metadata"].get("creationTimestamp"))
    spec = backends.of(job).replica_names(job)
    for e in pod_events:
        pod = incarnation_key(spec, e["name"])
        # The taint-eviction controller names the pod without its UID: such an event is this job's
        # when it came after the job was created.
        ours = e.get("uid") in own_uids if e.get("uid") else (
            created is None or e.get("created") is None or e["created"] >= created)
        # The taint manager uses the same reason when it cancels an eviction.
        if (pod in incarnations and ours and e["reason"] in POD_LOSS_CAUSES
                and not (e.get("message") or "").startswith("Cancelling")):
            c = causes.setdefault((pod, POD_LOSS_CAUSES[e["reason"]]), {
                "pod": pod, "cause": POD_LOSS_CAUSES[e["reason"]], "reason": e["reason"], "retried": True,
                "uids": set(), "anonymous": 0})
            if e.get("uid"):
                c["uids"].add(e["uid"])
            else:
                c["anonymous"] += e.get("count") or 1
    out = []
    for c in causes.values():
        c["replica"] = c["pod"][len(prefix):] if c["pod"].startswith(prefix) else c["pod"]
        if "uids" in c:  # one loss per pod incarnation, however many events it got
            # Never more losses than the replica had pods: merged events cannot inflate it.
            c["count"] = min(len(c.pop("uids")) + c.pop("anonymous"), max(len(incarnations.get(c["pod"], ())), 1))
        out.append(c)
    return sorted(out, key=lambda c: (natural_key(c["replica"]), c["cause"]))


def retries_left(backoff: int | None, restarts: int, causes: Sequence[dict]) -> int | None:
    """The operator's budget (backoffLimit) less the restarts that were the pods' own exits, not losses."""
    if backoff is None:
        return None
    losses = sum(c.get("count", 0) for c in causes if c.get("reason") not in NOT_A_LOSS)
    return max(backoff - max(restarts - losses, 0), 0)


def is_healthy(pod: dict) -> bool:
    return pod.get("phase") in HEALTHY_PHASES and not pod.get("deleting") and not (
        pod.get("exit_code") not in (None, 0) and pod.get("phase") != "Running")


def pod_problem(pod: dict) -> str:
    """Why a pod is not healthy, in one short phrase ('' when nothing is known)."""
    if pod.get("deleting"):
        return "terminating"
    if pod.get("unschedulable"):
        return f"unschedulable: {pod['unschedulable']}"
    if pod.get("waiting"):
        return pod["waiting"]
    if pod.get("exit_code") not in (None, 0):
        return f"last exit {pod['exit_code']}: {contract.describe_exit_code(pod['exit_code'])}"
    return ""


def create_failures(job_events: Sequence[dict]) -> list[str]:
    """Why the operator could not create the job's pods or services (its FailedCreate* events), newest first."""
    failed = [e for e in job_events if e["reason"].startswith("FailedCreate")]
    failed.sort(key=lambda e: e.get("created") or datetime.datetime.min.replace(tzinfo=datetime.timezone.utc),
                reverse=True)
    seen, out = set(), []
    for e in failed:
        msg = " ".join((e.get("message") or "").split())
        if msg not in seen:
            seen.add(msg)
            out.append(msg)
    return out


def newest_commit(lines: Iterable[str]) -> dict:
    """The newest committed step a runtime log (with --timestamps) names, and when: resumed from or preempted at."""
    out: dict[str, Any] = {"resumed_from": None, "preempted_at": None, "step": None, "at": None}
    for line in lines:
        stamp, _, text = line.partition(" ")
        at = parse_time(stamp)
        if at is None:
            text = line
        got = contract.parse_runtime_log([text])
        for key in ("resumed_from", "preempted_at"):
            if got[key] is not None:
                out[key] = got[key]
                if out["step"] is None or got[key] >= out["step"]:
                    out["step"], out["at"] = got[key], at
    return out


def summary_lines(ns: str, name: str, state: str, pods: Sequence[dict], replicas: int, restarts: int,
                  left: int | None, causes: Sequence[dict], progress: dict, now: datetime.datetime) -> list[str]:
    """The head of `launch status`: state, pods by phase, restarts by cause, the newest committed step."""
    head = f"{ns}/{name}: {state}"
    if left is not None:
        head += f"  (restarts {restarts}, {left} retries left)"
    else:
        head += f"  (restarts {restarts})"
    phases: dict[str, int] = {}
    for p in pods:
        phases[p.get("phase") or "Unknown"] = phases.get(p.get("phase") or "Unknown", 0) + 1
    running = phases.get("Running", 0)
    by_count = ", ".join(f"{n} {ph}" for ph, n in sorted(phases.items(), key=lambda kv: (-kv[1], kv[0])))
    lines = [head, f"  pods      {running}/{replicas} Running" + (f"  ({by_count})" if by_count and
                                                                  set(phases) != {"Running"} else "")]
    if causes:
        totals: dict[str, int] = {}
        for c in causes:
            key = f"exit {c['exit_code']}" if "exit_code" in c else c.get("reason", c["cause"])
            totals[key] = totals.get(key, 0) + c.get("count", 1)
        lines.append("  restarts  " + ", ".join(f"{n} {k}" for k, n in sorted(totals.items(), key=lambda kv: -kv[1])))
    if progress.get("step") is not None:
        text = f"  step      {progress['step']} committed"
        if progress.get("at") is not None:
            text += f" {age(progress['at'], now)} ago"
        if progress.get("resumed_from") is not None:
            text += f"; resumed from step {progress['resumed_from']}"
        if progress.get("preempted_at") is not None:
            text += f"; preempted at step {progress['preempted_at']}"
        lines.append(text)
    return lines


def pod_rows(pods: Sequence[dict], restarts: dict[str, int], *, all_pods: bool) -> list[list[str]]:
    """The per-pod table (unhealthy pods only unless all_pods), in natural order."""
    rows = []
    for p in sorted(pods, key=lambda p: natural_key(p["replica"])):
        if all_pods or not is_healthy(p):
            rows.append([p["replica"], p.get("phase") or "?", p.get("node") or "-", str(restarts.get(p["name"], 0)),
                         pod_problem(p) or "-"])
    return rows


POD_HEADER = ["REPLICA", "PHASE", "NODE", "RESTARTS", "WHY"]


def table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "") -> list[str]:
    """Columns as wide as their widest cell, two spaces apart; the last column is not padded."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [str(c).ljust(w) for c, w in zip(r[:-1], widths)] + [str(r[-1])]
        out.append(indent + "  ".join(cells).rstrip())
    return out


def age(then: datetime.datetime | str | None, now: datetime.datetime) -> str:
    """kubectl's AGE: 45s, 12m, 5h, 3d ('<unknown>' without a time)."""
    then = parse_time(then) if isinstance(then, str) else then
    if then is None:
        return "<unknown>"
    s = max(int((now - then).total_seconds()), 0)
    if s < 120:
        return f"{s}s"
    if s < 120 * 60:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def parse_time(value: Any) -> datetime.datetime | None:
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if not value or not isinstance(value, str):
        return None
    try:
        # RFC 3339 with Z and up to nanoseconds (the kubelet's log timestamps)
        text = value.replace("Z", "+00:00")
        text = re.sub(r"\.(\d{6})\d+", r".\1", text)
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


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
