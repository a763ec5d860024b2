"""What `launch status` (and chaos) read from the cluster: the job, its pods, events and logs, as plain records.

One read of the job and one list call per kind, as plain JSON (no typed models);
the counting and summarising is launcher/status/format.py's, the printing
launcher/status/report.py's.
"""

from __future__ import annotations

import datetime
import time
from typing import Any

from launcher import backends
from launcher.errors import ClusterError
from launcher.k8s import kueue
from launcher.k8s.api import Api, call, raw
from launcher.k8s.jobs import get_job, job_pod_docs, owner_uid, pod_container, replica_id, state
from launcher.status import admission as kueue_admission
from launcher.status import evictions
from launcher.status import format as status_fmt
from launcher.status import ledger as restart_ledger
from trainer import contract


def describe_pod(pod: dict) -> dict:
    """A pod's JSON (as the API serves it) as the plain record launcher/status/format.py reads."""
    meta, spec, status = pod.get("metadata") or {}, pod.get("spec") or {}, pod.get("status") or {}
    out = {"pod": meta.get("name"), "name": meta.get("name"), "uid": meta.get("uid"), "owner_uid": owner_uid(pod),
           "replica": replica_id(pod), "phase": status.get("phase"), "node": spec.get("nodeName"), "restarts": 0,
           "deleting": meta.get("deletionTimestamp") is not None}
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and c.get("status") == "False" and c.get("reason") == "Unschedulable":
            out["unschedulable"] = " ".join((c.get("message") or c["reason"]).split())
    container = pod_container(pod)
    for cs in status.get("containerStatuses") or []:
        if cs.get("name") != container:
            continue
        out["restarts"] = cs.get("restartCount") or 0
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting is not None and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            out["waiting"] = f"{waiting['reason']}: {waiting['message']}" if waiting.get("message") else waiting["reason"]
        term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated")
        if term is not None:
            out["exit_code"] = term.get("exitCode")
            out["exit_meaning"] = contract.describe_exit_code(term.get("exitCode"))
            out["retryable"] = contract.is_retryable(term.get("exitCode"))
    return out


def event_record(e: dict) -> dict:
    """An event's JSON as the plain record launcher/status/format.py reads ("created" a datetime)."""
    involved = e.get("involvedObject") or {}
    return {"kind": involved.get("kind"), "name": involved.get("name"), "uid": involved.get("uid"),
            "reason": e.get("reason") or "", "message": e.get("message") or "", "count": e.get("count") or 1,
            "type": e.get("type"), "created": status_fmt.parse_time((e.get("metadata") or {}).get("creationTimestamp"))}


def list_events(api: Api, ns: str, field_selector: str) -> list[dict]:
    """Events by field selector, every page of them, read as plain JSON (no typed models)."""
    out, token = [], None
    while True:
        got = call("listing events", lambda: raw(api.core.list_namespaced_event(
            ns, field_selector=field_selector, limit=1000, _continue=token, _preload_content=False)))
        out += [event_record(e) for e in got.get("items") or []]
        token = (got.get("metadata") or {}).get("continue")
        if not token:
            return out


def create_failures(api: Api, ns: str, job: dict) -> list[str]:
    """Why the operator could not create the job's pods (its FailedCreate* events), newest first."""
    return status_fmt.create_failures(list_events(api, ns, f"involvedObject.uid={job['metadata'].get('uid')}"))


def runtime_progress(api: Api, ns: str, pod: Any, container: str = contract.CONTAINER_NAME) -> dict:
    """The newest committed step the runtime in this pod logged (last 500 lines), and when."""
    name = pod["metadata"]["name"] if isinstance(pod, dict) else pod.metadata.name
    text = call(f"reading logs of {name}", lambda: api.core.read_namespaced_pod_log(
        name, ns, container=container, tail_lines=500, timestamps=True), missing_ok=True)
    return status_fmt.newest_commit((text or "").splitlines())


def restart_events(job_events: list[dict]) -> list[dict]:
    return [{"reason": e["reason"], "message": e["message"], "count": e["count"]} for e in job_events
            if e["reason"] and ("Restart" in e["reason"] or "Fail" in e["reason"] or "Evict" in e["reason"])]


def pod_recreations(api: Api, ns: str, name: str) -> int:
    """How often the job's pods were created again: pod UIDs per replica less one (launcher/status/format.py)."""
    job = get_job(api, ns, name)
    pods = [describe_pod(p) for p in job_pod_docs(api, ns, name, job["metadata"].get("uid"), backends.of(job))]
    incarnations = status_fmt.pod_incarnations(job, pods, list_events(api, ns, "involvedObject.kind=Pod"))
    return sum(status_fmt.count_restarts(incarnations).values())


def exit_causes(pods: list[dict]) -> list[dict]:
    """Each distinct non-zero exit of a pod still there, per replica (a TrainJob: no controller event records one)."""
    out: dict[tuple[str, str], dict] = {}
    for p in pods:
        code = p.get("exit_code")
        if code not in (None, 0):
            cause = f"exit {code}: {contract.describe_exit_code(code)}"
            c = out.setdefault((p["replica"], cause), {"pod": p["name"], "replica": p["replica"], "cause": cause,
                                                       "exit_code": code, "retried": contract.is_retryable(code),
                                                       "count": 0})
            c["count"] += 1
    return sorted(out.values(), key=lambda c: (status_fmt.natural_key(c["replica"]), c["cause"]))


def jobset_restarts(api: Api, ns: str, job: dict) -> tuple[int, int] | None:
    """A TrainJob's restarts (all, counted toward its budget) from its JobSet; None for other kinds or no JobSet."""
    backend = backends.of(job)
    if not hasattr(backend, "JOBSET_PLURAL"):
        return None
    name = job["metadata"]["name"]
    try:
        jobset = call(f"reading JobSet {name}", lambda: api.custom.get_namespaced_custom_object(
            backend.JOBSET_GROUP, backend.JOBSET_VERSION, ns, backend.JOBSET_PLURAL, name), missing_ok=True)
    except ClusterError:
        return None  # no right to read JobSets: status stands on the pods alone
    return backend.restarts(jobset)


def read_status(api: Api, ns: str, name: str, *, now: Any = None) -> dict:
    """Everything `launch status` shows, from one read of the job and one list call per kind.

    Restarts are pod UIDs per replica over the job's life (launcher/status/format.py), never summed
    events. Keys starting with '_' are for the text report only.
    """
    job = get_job(api, ns, name)
    backend = backends.of(job)
    ledger = restart_ledger.Reader(job)  # the runtime's restart ledger, read while the cluster is
    uid = job["metadata"].get("uid")
    pods = [describe_pod(p) for p in job_pod_docs(api, ns, name, uid, backend)]
    job_events = list_events(api, ns, f"involvedObject.uid={uid}")
    pod_events = list_events(api, ns, "involvedObject.kind=Pod")
    incarnations = status_fmt.pod_incarnations(job, pods, pod_events)
    per_pod = status_fmt.count_restarts(incarnations)
    restarts = sum(per_pod.values())
    causes = status_fmt.restart_causes(job, job_events, pod_events, incarnations)
    progress: dict = {"resumed_from": None, "preempted_at": None, "step": None, "at": None}
    # The newest committed step, from the first replica's log: one log read, not one per pod.
    first = next((p for p in pods if p["phase"] in ("Running", "Succeeded", "Failed")), None)
    if first is not None:
        try:
            progress = runtime_progress(api, ns, {"metadata": {"name": first["name"]}}, backend.CONTAINER)
        except ClusterError:
            pass  # logs are a bonus here; the status above stands without them
    spec_names = backend.replica_names(job)
    for p in pods:
        p["restarts"] = per_pod.get(status_fmt.incarnation_key(spec_names, p["name"]), 0)
        if first is not None and p["name"] == first["name"]:
            p.update({k: progress[k] for k in ("resumed_from", "preempted_at")})
    retries_left = status_fmt.retries_left(backend.retry_limit(job), restarts, causes)
    spent = jobset_restarts(api, ns, job)
    if spent is not None:
        # JobSet restarts every node at once and counts it; a pod replaced after exit 143 or a
        # disruption is counted nowhere (podFailurePolicy Ignore): the JobSet's numbers are the budget.
        restarts, counted = spent
        causes = causes + exit_causes(pods)
        limit = backend.retry_limit(job)
        retries_left = None if limit is None else max(limit - counted, 0)
    admission = kueue.read_admission(api, ns, job)  # None (and no call) for a job not behind Kueue
    summary, unread = ledger.result(time.time())
    # A Kueue preemption reaches the runtime as a bare SIGTERM: the Workload says whose it was.
    by_kueue = evictions.match(restart_ledger.incidents(summary), admission.evictions) if (
        summary is not None and admission is not None) else {}
    return {"name": name, "namespace": ns, "uid": uid, "state": state(job),
            "conditions": [{k: c.get(k) for k in ("type", "status", "reason", "message")}
                           for c in (job.get("status") or {}).get("conditions") or []],
            "replicas": (job.get("status") or {}).get("replicaStatuses") or {},
            "expected_pods": backend.expected_pods(job),
            "pods": [{k: v for k, v in p.items() if k not in ("name", "owner_uid")} for p in pods],
            "restarts": restarts, "restarts_by_pod": {k: v for k, v in per_pod.items() if v},
            "retries_left": retries_left,
            "causes": causes, "create_failures": status_fmt.create_failures(job_events),
            "committed_step": progress["step"],
            "committed_at": progress["at"].isoformat() if progress.get("at") else None,
            "events": restart_events(job_events),
            "ledger": restart_ledger.doc(summary, by_kueue) if summary is not None else {"not_shown": unread},
            **({"admission": kueue_admission.doc(admission)} if admission is not None else {}),
            "_ledger": (summary, unread, by_kueue), "_admission": admission, "_progress": progress,
            "_now": now or datetime.datetime.now(datetime.timezone.utc)}
