"""Kueue's objects for a job, read (and, for `launch chaos --kueue-preempt`, a bare Workload written).

Every read is plain JSON and every failure to read is an answer, not an error: a cluster without
Kueue, or a user who may not read its objects, gets `launch status` without the Kueue block's
detail. launcher/status/admission.py makes sense of what is read here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from launcher.errors import ClusterError
from launcher.k8s.api import Api, call, raw
from launcher.status import admission as kueue

from launcher.kueue.names import (CLUSTER_QUEUE as CLUSTER_QUEUES, LOCAL_QUEUE as LOCAL_QUEUES,
                                  PRIORITY_CLASS as PRIORITY_CLASSES, WORKLOAD as WORKLOADS)


def _list(api: Api, ns: str, plural: str, selector: str | None = None) -> list[dict]:
    got = call(f"listing Kueue {plural}", lambda: raw(api.custom.list_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, ns, plural, label_selector=selector or "", _preload_content=False)))
    return got.get("items") or []


def workloads(api: Api, ns: str, job_uid: str | None = None) -> list[dict]:
    """The namespace's Workloads (one list call), or those of one job (by Kueue's job-uid label)."""
    return _list(api, ns, WORKLOADS, f"{kueue.JOB_UID_LABEL}={job_uid}" if job_uid else None)


def newest(items: Sequence[dict]) -> dict | None:
    """A job has one Workload; while Kueue replaces one (a changed spec) the newer is the one that counts."""
    return max(items, key=lambda w: (w.get("metadata") or {}).get("creationTimestamp") or "", default=None)


def workload_events(api: Api, ns: str, workload: dict) -> list[dict]:
    """Kueue's events on the Workload, as admission.event_record reads them (no typed models)."""
    uid = (workload.get("metadata") or {}).get("uid")
    got = call("listing the Workload's events", lambda: raw(api.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.uid={uid}", _preload_content=False)))
    return [kueue.event_record(e) for e in got.get("items") or []]


def local_queue(api: Api, ns: str, name: str) -> dict | None:
    return call(f"reading LocalQueue {name}", lambda: api.custom.get_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, ns, LOCAL_QUEUES, name), missing_ok=True)


def cluster_queue_of(api: Api, ns: str, local: str) -> str | None:
    """The ClusterQueue a LocalQueue feeds; None when it cannot be read (missing, or not this user's to read)."""
    try:
        lq = local_queue(api, ns, local)
    except ClusterError:
        return None
    return ((lq or {}).get("spec") or {}).get("clusterQueue")


def cluster_queue(api: Api, name: str) -> dict | None:
    return call(f"reading ClusterQueue {name}", lambda: api.custom.get_cluster_custom_object(
        kueue.GROUP, kueue.VERSION, CLUSTER_QUEUES, name), missing_ok=True)


def priority_classes(api: Api) -> list[dict]:
    return call("listing WorkloadPriorityClasses", lambda: api.custom.list_cluster_custom_object(
        kueue.GROUP, kueue.VERSION, PRIORITY_CLASSES))["items"]


def position(api: Api, ns: str, local: str, workload: str) -> int | None:
    """The Workload's position in its LocalQueue from the visibility API; None where it is not served."""
    path = f"/apis/{kueue.VISIBILITY_GROUP}/{kueue.VERSION}/namespaces/{{namespace}}/localqueues/{{name}}/pendingworkloads"
    try:
        got = call("reading the pending workloads", lambda: raw(api.custom.api_client.call_api(
            path, "GET", {"namespace": ns, "name": local}, [], {"Accept": "application/json"},
            auth_settings=["BearerToken"], _preload_content=False, _return_http_data_only=True)))
    except (ClusterError, ValueError):
        return None  # not served (no visibility API, no right to it): say nothing
    for item in got.get("items") or []:
        if (item.get("metadata") or {}).get("name") == workload:
            pos = item.get("positionInLocalQueue")
            return int(pos) + 1 if isinstance(pos, int) else None  # Kueue counts from 0
    return None


def read_admission(api: Api, ns: str, job: dict) -> kueue.Admission | None:
    """The job's Admission (None for a job without a queue label: no call is made).

    Calls: the job's Workloads by label, their events, the LocalQueue while the job is not admitted
    (for its ClusterQueue) and the visibility API while it is queued.
    """
    queue = kueue.queue_name(job)
    if queue is None:
        return None
    try:
        workload = newest(workloads(api, ns, (job.get("metadata") or {}).get("uid")))
        events = workload_events(api, ns, workload) if workload is not None else []
    except ClusterError as e:
        return kueue.Admission(queue, "Unknown", f"cannot read its Workload: {e}")
    a = kueue.summarize(job, workload, events)
    if a.cluster_queue is None:  # not admitted: the LocalQueue names it
        a = dataclasses.replace(a, cluster_queue=cluster_queue_of(api, ns, queue))
    if a.state in ("Queued", "Requeued") and a.workload:
        a = dataclasses.replace(a, position=position(api, ns, queue, a.workload))
    return a


def admissions(api: Api, ns: str, jobs: Sequence[dict]) -> dict[str, kueue.Admission]:
    """{job name: Admission} for `launch list`: one list of the namespace's Workloads, and only if a job is queued."""
    queued = [j for j in jobs if kueue.queue_name(j) is not None]
    if not queued:
        return {}
    try:
        by_uid: dict[str, list[dict]] = {}
        for w in workloads(api, ns):
            by_uid.setdefault(((w.get("metadata") or {}).get("labels") or {}).get(kueue.JOB_UID_LABEL), []).append(w)
    except ClusterError as e:
        return {j["metadata"]["name"]: kueue.Admission(kueue.queue_name(j), "Unknown", str(e)) for j in queued}
    cqs: dict[str, str | None] = {}
    out = {}
    for j in queued:
        q = kueue.queue_name(j)
        w = newest(by_uid.get(j["metadata"].get("uid"), []))
        a = kueue.summarize(j, w)
        if a.cluster_queue is None:  # one read per LocalQueue, not per job
            if q not in cqs:
                cqs[q] = cluster_queue_of(api, ns, q)
            a = dataclasses.replace(a, cluster_queue=cqs[q])
        out[j["metadata"]["name"]] = a
    return out


def create_workload(api: Api, ns: str, body: dict) -> dict:
    return call("creating the preempting Workload", lambda: api.custom.create_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, ns, WORKLOADS, body))


def read_workload(api: Api, ns: str, name: str) -> dict | None:
    return call(f"reading Workload {name}", lambda: api.custom.get_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, ns, WORKLOADS, name), missing_ok=True)


def delete_workload(api: Api, ns: str, name: str) -> None:
    call(f"deleting Workload {name}", lambda: api.custom.delete_namespaced_custom_object(
        kueue.GROUP, kueue.VERSION, ns, WORKLOADS, name, body={"propagationPolicy": "Background"}),
         missing_ok=True)

