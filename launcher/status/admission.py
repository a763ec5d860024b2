"""A job's place in Kueue, from its Workload (kueue.x-k8s.io/v1beta2): queued, admitted, evicted, requeued.

Pure: launcher/k8s/kueue.py reads the Workload, its events and (where the visibility API is
served) the queue position as raw records (`KueueReads`); this module turns them into one `Admission`, the lines
`launch status` prints, the short state of `launch list` and what `launch logs -f` waits for.
Names are those of Kueue v0.17.0 (apis/kueue/v1beta2/workload_types.go, pkg/workload,
pkg/scheduler/preemption).
"""

from __future__ import annotations

import dataclasses
import datetime
from typing import TYPE_CHECKING, Any, Mapping, Sequence

# Kueue's API facts live in launcher/kueue/names.py; re-exported for this module's readers.
from launcher.kueue.names import (GROUP, JOB_UID_LABEL, QUEUE_LABEL, VERSION, VISIBILITY_GROUP,  # noqa: F401
                                  WORKLOAD_PRIORITY_CLASS_KIND, queue_name)
from launcher.kueue.names import PRIORITY_LABEL as PRIORITY_CLASS_LABEL  # noqa: F401
from launcher.records import age, parse_time

if TYPE_CHECKING:
    from launcher.k8s.kueue import KueueReads

# Workload condition types and the eviction reason of a preemption (WorkloadEvictedByPreemption).
QUOTA_RESERVED, ADMITTED, EVICTED, PREEMPTED, REQUEUED, FINISHED = (
    "QuotaReserved", "Admitted", "Evicted", "Preempted", "Requeued", "Finished")
BY_PREEMPTION = "Preempted"
#: Re-admission sets Evicted and Preempted to False with this message prefix (resetActiveCondition).
PREVIOUSLY = "Previously: "
#: Event reasons on the Workload: workload.Evict records "EvictedDueTo<reason>" (ReasonWithCause),
#: the preemptor records "Preempted" on its victim with the preemption message and priorities.
EVICTED_EVENT_PREFIX = "EvictedDueTo"
PREEMPTED_EVENT = "Preempted"
#: HumanReadablePreemptionReasons (pkg/scheduler/preemption): the message names the reason in words only.
PREEMPTION_REASONS = {
    "prioritization in the ClusterQueue": "InClusterQueue",
    "reclamation within the cohort while borrowing": "InCohortReclaimWhileBorrowing",
    "reclamation within the cohort": "InCohortReclamation",
    "Fair Sharing within the cohort": "InCohortFairSharing",
}


@dataclasses.dataclass(frozen=True)
class Eviction:
    """One eviction of the job's Workload, as Kueue recorded it (never inferred from the pods)."""

    reason: str  # the Evicted condition's reason: Preempted, PodsReadyTimeout, Deactivated, ...
    message: str
    at: datetime.datetime | None  # when; None when only "some time before `before`" is known
    before: datetime.datetime | None = None  # re-admitted at this time (the eviction was earlier)
    preemption: str | None = None  # the Preempted condition's reason: InClusterQueue, InCohortReclamation, ...
    source: str = "condition"  # condition | event

    @property
    def cause(self) -> str:
        """"preempted by Kueue (InClusterQueue: Preempted to accommodate ...)", or "evicted by Kueue (...)"."""
        if self.reason == BY_PREEMPTION:
            return f"preempted by Kueue ({self.preemption or BY_PREEMPTION}: {self.message})"
        return f"evicted by Kueue ({self.reason}: {self.message})"


@dataclasses.dataclass(frozen=True)
class Admission:
    """Where a queued job stands in Kueue."""

    queue: str  # the LocalQueue the job names
    state: str  # Waiting, Queued, QuotaReserved, Admitted, Preempted, Evicted, Requeued, Finished
    message: str = ""
    workload: str | None = None
    cluster_queue: str | None = None
    flavors: Mapping[str, str] = dataclasses.field(default_factory=dict)  # resource -> ResourceFlavor
    since: datetime.datetime | None = None  # when it entered this state
    position: int | None = None  # in its LocalQueue, where the visibility API is served
    priority: int | None = None
    evictions: tuple[Eviction, ...] = ()  # oldest first; see `evictions`


def of_reads(job: dict, reads: KueueReads) -> Admission:
    """The job's Admission from what launcher/k8s/kueue.py read (its Workload, events, LocalQueue, position)."""
    if reads.error is not None:
        return Admission(reads.queue, "Unknown", reads.error)
    a = summarize(job, reads.workload, [event_record(e) for e in reads.events])
    if a.cluster_queue is None:  # not admitted: the LocalQueue names it
        a = dataclasses.replace(a, cluster_queue=reads.cluster_queue)
    if a.state in ("Queued", "Requeued") and a.workload:
        a = dataclasses.replace(a, position=reads.position)
    return a


def _conditions(workload: dict) -> dict[str, dict]:
    return {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}


def _true(c: dict | None) -> bool:
    return c is not None and c.get("status") == "True"


def event_record(e: dict) -> dict:
    """A core/v1 Event's JSON as `evictions` reads it: {"reason", "message", "first", "last", "count"}."""
    first = e.get("firstTimestamp") or e.get("eventTime") or (e.get("metadata") or {}).get("creationTimestamp")
    return {"reason": e.get("reason") or "", "message": e.get("message") or "", "first": first,
            "last": e.get("lastTimestamp") or first, "count": e.get("count") or 1}


def preemption_reason(message: str) -> str | None:
    """InClusterQueue & co. from a preemption message, which names the reason in words only."""
    for words, reason in PREEMPTION_REASONS.items():  # longest phrase first where one extends another
        if f"due to {words}" in message:
            return reason
    return None


def _strip(message: str) -> str:
    return message[len(PREVIOUSLY):] if message.startswith(PREVIOUSLY) else message


def evictions(workload: dict, events: Sequence[dict] = ()) -> tuple[Eviction, ...]:
    """Every eviction Kueue recorded for the Workload, oldest first.

    A Workload keeps only the latest condition of each type, so its conditions give the latest
    eviction only: exact while Evicted is True; once re-admitted, Evicted is False with
    "Previously: <message>" and its time is the re-admission's (the eviction came before it, and the
    Requeued condition keeps the original reason). Earlier evictions come from Kueue's events on
    the Workload (`EvictedDueTo<reason>`; its message is the eviction's, the preemption's reason in
    words), which live as long as the API server keeps events (an hour by default). `events`:
    event_record's.
    """
    out: list[Eviction] = []
    for e in events:
        if not e.get("reason", "").startswith(EVICTED_EVENT_PREFIX):
            continue
        reason = e["reason"][len(EVICTED_EVENT_PREFIX):]
        message = e.get("message") or ""
        preemption = preemption_reason(message) if reason == BY_PREEMPTION else None
        # A merged event (same message: the same preemptor) stands for `count` evictions; its first and last are known.
        times = [parse_time(e.get("first"))] + ([parse_time(e.get("last"))] if (e.get("count") or 1) > 1 else [])
        out += [Eviction(reason, message, t, preemption=preemption, source="event") for t in times]
    conds = _conditions(workload)
    ev, pre, req = conds.get(EVICTED), conds.get(PREEMPTED), conds.get(REQUEUED)
    latest: Eviction | None = None
    if _true(ev):
        preemption = (pre.get("reason") if _true(pre) else None) or preemption_reason(ev.get("message") or "")
        latest = Eviction(ev.get("reason") or "", ev.get("message") or "", parse_time(ev.get("lastTransitionTime")),
                          preemption=preemption if ev.get("reason") == BY_PREEMPTION else None)
    elif ev is not None and (ev.get("message") or "").startswith(PREVIOUSLY):
        message = _strip(ev.get("message") or "")
        # Re-admitted: the Requeued condition still carries the eviction's reason and message.
        reason = req.get("reason") if req is not None and req.get("message") == message else None
        reason = reason or (BY_PREEMPTION if preemption_reason(message) else "")
        latest = Eviction(reason, message, None, before=parse_time(ev.get("lastTransitionTime")),
                          preemption=preemption_reason(message) if reason == BY_PREEMPTION else None)
    if latest is not None and not any(o.message == latest.message for o in out):
        out.append(latest)
    far = datetime.datetime.max.replace(tzinfo=datetime.timezone.utc)
    return tuple(sorted(out, key=lambda e: e.at or e.before or far))


def summarize(job: dict, workload: dict | None, events: Sequence[dict] = ()) -> Admission:
    """The job's Admission (the job has a queue label: see queue_name); `events` as in `evictions`.

    The ClusterQueue of a job not admitted, and the position, are the caller's to add (other reads).
    """
    queue = queue_name(job) or ""
    if workload is None:
        return Admission(queue, "Waiting", "Kueue has not created a Workload for the job yet "
                                           "(is Kueue running, and does it manage this kind of job?)")
    status = workload.get("status") or {}
    admission = status.get("admission") or {}
    flavors: dict[str, str] = {}
    for ps in admission.get("podSetAssignments") or []:
        flavors.update(ps.get("flavors") or {})
    conds = _conditions(workload)
    record = dict(queue=queue, workload=(workload.get("metadata") or {}).get("name"),
                  cluster_queue=admission.get("clusterQueue"), flavors=flavors,
                  priority=(workload.get("spec") or {}).get("priority"), evictions=evictions(workload, events))

    def at(c: dict | None) -> datetime.datetime | None:
        return parse_time((c or {}).get("lastTransitionTime"))

    fin, ev, adm, quota, req = (conds.get(t) for t in (FINISHED, EVICTED, ADMITTED, QUOTA_RESERVED, REQUEUED))
    if _true(fin):
        return Admission(state="Finished", message=(fin or {}).get("message") or "", since=at(fin), **record)
    if _true(ev):
        name = "Preempted" if ev.get("reason") == BY_PREEMPTION else "Evicted"
        if not _true(quota) and _true(req):  # its pods are gone and it waits in the queue again
            return Admission(state="Requeued", message=_pending(quota), since=at(req), **record)
        return Admission(state=name, message=ev.get("message") or "", since=at(ev), **record)
    if _true(adm):
        return Admission(state="Admitted", message=adm.get("message") or "", since=at(adm), **record)
    if _true(quota):
        return Admission(state="QuotaReserved", message="quota reserved; waiting for its admission checks",
                         since=at(quota), **record)
    return Admission(state="Queued", message=_pending(quota), since=at(quota) or parse_time(
        (workload.get("metadata") or {}).get("creationTimestamp")), **record)


def _pending(quota: dict | None) -> str:
    """Why the Workload has no quota: the QuotaReserved=False message (the flavor assigner's, usually)."""
    message = " ".join(((quota or {}).get("message") or "").split())
    return _strip(message) or "waiting for Kueue to consider it"


def _where(a: Admission) -> str:
    return a.cluster_queue or a.queue


def short_state(a: Admission | None) -> str:
    """`launch list`'s ADMISSION column: `Queued (gpu-team-a)`, `Admitted`, `Preempted → requeued`."""
    if a is None:
        return "-"
    if a.state in ("Queued", "Waiting"):
        return f"{a.state} ({_where(a)}" + (f", #{a.position}" if a.position is not None else "") + ")"
    if a.state == "Requeued":
        reason = a.evictions[-1].reason if a.evictions else BY_PREEMPTION
        return ("Preempted" if reason == BY_PREEMPTION else f"Evicted ({reason})") + " → requeued"
    if a.state == "Evicted":
        return f"Evicted ({a.evictions[-1].reason})" if a.evictions else "Evicted"
    return a.state


def lines(a: Admission, now: datetime.datetime) -> list[str]:
    """`launch status`'s Kueue block: the state and why, then each eviction Kueue recorded."""
    where = f"LocalQueue {a.queue}" + (f", ClusterQueue {a.cluster_queue}" if a.cluster_queue else "")
    ago = f" {age(a.since, now)} ago" if a.since is not None else ""
    if a.state == "Admitted":
        flavors = ", ".join(f"{r}: {f}" for r, f in sorted(a.flavors.items()))
        head = f"kueue     Admitted{ago} ({where}" + (f"; flavors {flavors}" if flavors else "") + ")"
    elif a.state in ("Queued", "Requeued", "Waiting"):
        pos = f", position {a.position} in its LocalQueue" if a.position is not None else ""
        head = f"kueue     {short_state(a) if a.state == 'Requeued' else a.state}{ago} ({where}{pos}): {a.message}"
    else:
        head = f"kueue     {a.state}{ago} ({where}): {a.message}" if a.message else f"kueue     {a.state}{ago}"
    out = [head]
    for e in a.evictions:
        when = e.at.strftime("%Y-%m-%dT%H:%M:%SZ") if e.at else (
            f"before {e.before.strftime('%Y-%m-%dT%H:%M:%SZ')}" if e.before else "at an unknown time")
        out.append(f"  evicted {when}: {e.cause}")
    return out


def waiting_line(a: Admission) -> str | None:
    """What `launch logs -f` says while the job is not admitted (None once it is)."""
    if a.state in ("Admitted", "QuotaReserved", "Finished"):
        return None
    if a.state == "Unknown":
        return f"behind Kueue's LocalQueue {a.queue}, but its Workload cannot be read: {a.message}"
    if a.state in ("Preempted", "Evicted"):
        return f"{a.state.lower()} by Kueue, its pods are being stopped: {a.evictions[-1].cause if a.evictions else ''}"
    pos = f" (position {a.position})" if a.position is not None else ""
    prefix = "preempted and requeued in" if a.state == "Requeued" else "queued in"
    return f"{prefix} Kueue's LocalQueue {a.queue}{pos}, waiting for admission: {a.message}"


def _iso(t: datetime.datetime | None) -> str | None:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else None


def doc(a: Admission | None) -> dict[str, Any] | None:
    """The admission record of `-o json|yaml`."""
    if a is None:
        return None
    return {"queue": a.queue, "state": a.state, "summary": short_state(a), "message": a.message,
            "workload": a.workload, "clusterQueue": a.cluster_queue, "flavors": dict(a.flavors),
            "since": _iso(a.since), "position": a.position, "priority": a.priority,
            "evictions": [{"reason": e.reason, "preemption": e.preemption, "message": e.message, "at": _iso(e.at),
                           "before": _iso(e.before), "source": e.source} for e in a.evictions]}
