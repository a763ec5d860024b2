"""A job's JobStatus from what was read: the cluster's records, the restart ledger, the clock (pure).

    launcher/k8s/status.read      -> StatusReads (the cluster, as served)
    launcher/objectstore          -> the ledger's objects (launcher/status/ledger.summarize)
    build(reads, ledger, now)     -> JobStatus (launcher/status/model.py)
    launcher/status/report.py     -> text, or -o json|yaml

Restarts are pod UIDs per replica over the job's life (launcher/status/counting.py), never
summed events; a TrainJob's come from its JobSet, whose numbers are the operator's budget.
"""

from __future__ import annotations

import datetime
from typing import Mapping

from launcher import backends
from launcher.k8s.status import StatusReads
from launcher.records import create_failures, describe_pod, event_record, parse_time
from launcher.status import admission as kueue_admission
from launcher.status import counting, evictions
from launcher.status import ledger as restart_ledger
from launcher.status.model import Cause, Condition, Event, JobStatus, Ledger, PodStatus, Progress, TrainerProgress


def _restart_events(job_events: list[dict]) -> tuple[Event, ...]:
    return tuple(Event(e["reason"], e["message"], e["count"]) for e in job_events
                 if e["reason"] and ("Restart" in e["reason"] or "Fail" in e["reason"] or "Evict" in e["reason"]))


def _cause(c: Mapping) -> Cause:
    return Cause(pod=c["pod"], replica=c["replica"], cause=c["cause"], retried=c["retried"],
                 exit_code=c.get("exit_code"), reason=c.get("reason"), count=c.get("count"))


def _pod(p: dict, restarts: int, progress: tuple[int | None, int | None] | None) -> PodStatus:
    return PodStatus(pod=p["pod"], uid=p["uid"], replica=p["replica"], phase=p["phase"], node=p["node"],
                     restarts=restarts, deleting=p["deleting"], unschedulable=p.get("unschedulable"),
                     waiting=p.get("waiting"), exit_code=p.get("exit_code"),
                     progress=progress)


def trainer_progress(job: dict) -> TrainerProgress | None:
    """A TrainJob's `status.trainerStatus` (the progress its runtime posts), None where there is none."""
    t = (job.get("status") or {}).get("trainerStatus")
    if not t:
        return None
    metrics = {m["name"]: str(m.get("value", "")) for m in t.get("metrics") or [] if m.get("name")}
    return TrainerProgress(percent=t.get("progressPercentage"), eta_seconds=t.get("estimatedRemainingSeconds"),
                           metrics=metrics, updated=parse_time(t.get("lastUpdatedTime")))


def pod_recreations(job: dict, pods: list[dict], pod_events: list[dict]) -> int:
    """How often the job's pods were created again and placed (pod JSON and Event JSON as served): a
    replacement deleted while still Pending ran nothing (counting.never_placed; CI once counted 3 for 2)."""
    described, events = [describe_pod(p) for p in pods], [event_record(e) for e in pod_events]
    incarnations = counting.pod_incarnations(job, described, events)
    return sum(counting.count_restarts(incarnations).values()) - counting.never_placed(incarnations, described, events)


def build(reads: StatusReads, ledger: Ledger, now: datetime.datetime) -> JobStatus:
    """The JobStatus; `ledger`: the restart ledger's summary or why it is not shown (Kueue's part is added here)."""
    job = reads.job
    backend = backends.of(job)
    pods = [describe_pod(p) for p in reads.pods]
    job_events = [event_record(e) for e in reads.job_events]
    pod_events = [event_record(e) for e in reads.pod_events]
    incarnations = counting.pod_incarnations(job, pods, pod_events)
    per_pod = counting.count_restarts(incarnations)
    restarts = sum(per_pod.values())
    causes = counting.restart_causes(job, job_events, pod_events, incarnations)
    log = counting.newest_commit(reads.log) if reads.log is not None else None
    unplaced = counting.never_placed(incarnations, pods, pod_events)
    retries_left = counting.retries_left(backend.retry_limit(job), restarts - unplaced, causes)
    spent = backend.restarts(reads.jobset)
    if spent is not None:
        # JobSet restarts every node at once and counts it; a pod replaced after exit 143 or a
        # disruption is counted nowhere (podFailurePolicy Ignore): the JobSet's numbers are the budget.
        restarts, counted = spent
        causes = causes + counting.exit_causes(pods)
        limit = backend.retry_limit(job)
        retries_left = None if limit is None else max(limit - counted, 0)
    admission = kueue_admission.of_reads(job, reads.kueue) if reads.kueue is not None else None
    if admission is not None and admission.evictions and spent is None:
        # Each Kueue eviction suspends the job: its controller deletes every pod and makes them anew when
        # Kueue admits it again. Those recreations are Kueue's, not the pods' own exits: no retry spent.
        # Pods still Pending when suspended are among both `freed` and `unplaced`: take them out once.
        # An approximation: an unplaced replacement unrelated to the evictions is then not taken out.
        freed = len(admission.evictions) * backend.expected_pods(job)
        retries_left = counting.retries_left(backend.retry_limit(job), max(restarts - max(freed, unplaced), 0),
                                             causes)
    if ledger.summary is not None and admission is not None:
        # A Kueue preemption reaches the runtime as a bare SIGTERM: the Workload says whose it was.
        ledger = Ledger(ledger.summary, ledger.unread,
                        evictions.match(restart_ledger.incidents(ledger.summary), admission.evictions))
    spec_names = backend.replica_names(job)
    first = next((p for p in pods if p["phase"] in ("Running", "Succeeded", "Failed")), None)
    status = job.get("status") or {}
    return JobStatus(
        name=job["metadata"]["name"], namespace=reads.namespace, uid=job["metadata"].get("uid"),
        state=backend.state(job),
        conditions=tuple(Condition(c.get("type"), c.get("status"), c.get("reason"), c.get("message"))
                         for c in status.get("conditions") or []),
        replicas=status.get("replicaStatuses") or {}, expected_pods=backend.expected_pods(job),
        pods=tuple(_pod(p, per_pod.get(counting.incarnation_key(spec_names, p["name"]), 0),
                        (log["resumed_from"], log["preempted_at"]) if first is p and log is not None else
                        (None, None) if first is p else None) for p in pods),
        restarts=restarts, restarts_by_pod={k: v for k, v in per_pod.items() if v}, retries_left=retries_left,
        causes=tuple(_cause(c) for c in causes), create_failures=tuple(create_failures(job_events)),
        progress=Progress(**log) if log is not None else Progress(), events=_restart_events(job_events),
        ledger=ledger, admission=admission, now=now, trainer=trainer_progress(job))

