"""The cluster's JSON read as plain records: pods, events, times, natural order (pure).

Below both layers that use it: launcher/k8s/ (I/O) sorts and describes what it reads with
it, and launcher/status/ (the status of a job) builds on the same records. No I/O, no
kubernetes import. A pod record:

    {"pod", "name", "uid", "owner_uid", "replica", "phase", "node", "restarts", "deleting",
     "unschedulable" (the scheduler's message), "waiting" (reason: message),
     "exit_code", "exit_meaning", "retryable"}   (the last four only when known)

An event record: {"kind", "name", "uid", "reason", "message", "count", "type", "created" (datetime)}.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Sequence

from launcher import backends
from launcher.backends.protocol import Backend
from trainer import contract


def natural_key(text: str) -> list:
    """Sort key that orders digits by value: worker-2 before worker-10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", text)]


def parse_time(value: Any) -> datetime.datetime | None:
    """An RFC 3339 time (Z, up to nanoseconds: the kubelet's log timestamps) as an aware datetime; None if not one."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if not value or not isinstance(value, str):
        return None
    try:
        text = value.replace("Z", "+00:00")
        text = re.sub(r"\.(\d{6})\d+", r".\1", text)
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return None


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


def _labels(pod: Any) -> dict[str, str]:
    return (pod.get("metadata", {}).get("labels") if isinstance(pod, dict) else pod.metadata.labels) or {}


def pod_backend(labels: dict[str, str]) -> Backend:
    """The backend of a pod's job: a pod does not name its job's kind, but its controller left a job-name label."""
    return next((b for b in backends.BACKENDS.values() if b.POD_JOB_LABEL in labels), backends.DEFAULT)


def replica_id(pod: Any) -> str:
    """`worker-3`: the replica a pod runs, of a typed pod or a pod's JSON."""
    labels = _labels(pod)
    return str(pod_backend(labels).replica_id(labels))


def pod_container(pod: Any) -> str:
    """The name of our container in a pod (typed or JSON), by its backend."""
    return str(pod_backend(_labels(pod)).CONTAINER)


def owner_uid(pod: Any) -> str | None:
    """The UID of the pod's controller (a PyTorchJob, a JobSet's Job), of a typed pod or a pod's JSON."""
    if isinstance(pod, dict):
        refs = pod.get("metadata", {}).get("ownerReferences") or []
        return next((o.get("uid") for o in refs if o.get("controller")), None)
    return next((o.uid for o in pod.metadata.owner_references or [] if o.controller), None)


def describe_pod(pod: dict) -> dict:
    """A pod's JSON (as the API serves it, or the slim form launcher/k8s/pods.py makes of a Table row) as a record."""
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
    """An event's JSON as the plain record the status counts read ("created" a datetime)."""
    involved = e.get("involvedObject") or {}
    return {"kind": involved.get("kind"), "name": involved.get("name"), "uid": involved.get("uid"),
            "reason": e.get("reason") or "", "message": e.get("message") or "", "count": e.get("count") or 1,
            "type": e.get("type"), "created": parse_time((e.get("metadata") or {}).get("creationTimestamp"))}


def pod_problem(pod: dict) -> str:
    """Why a pod is not healthy, in one short phrase ('' when nothing is known)."""
    if pod.get("deleting"):
        return "terminating"
    if pod.get("unschedulable"):
        return f"unschedulable: {pod['unschedulable']}"
    if pod.get("waiting"):
        return str(pod["waiting"])
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
