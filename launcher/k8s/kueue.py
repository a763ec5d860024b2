"""Kueue's objects for a job, read (and, for `launch chaos --kueue-preempt`, a bare Workload written).

Every read is plain JSON and every failure to read is an answer, not an error: a cluster without
Kueue, or a user who may not read its objects, gets `launch status` without the Kueue block's
detail. Raw records only: launcher/status/admission.py makes sense of what is read here.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from launcher.errors import ClusterError
from launcher.k8s.api import Api, call, raw
from launcher.kueue.names import (CLUSTER_QUEUE as CLUSTER_QUEUES, GROUP, JOB_UID_LABEL,
                                  LOCAL_QUEUE as LOCAL_QUEUES, PRIORITY_CLASS as PRIORITY_CLASSES, queue_name,
                                  VERSION, VISIBILITY_GROUP, WORKLOAD as WORKLOADS)


def _list(api: Api, ns: str, plural: str, selector: str | None = None) -> list[dict]:
    got = call(f"listing Kueue {plural}", lambda: raw(api.custom.list_namespaced_custom_object(
        GROUP, VERSION, ns, plural, label_selector=selector or "", _preload_content=False)))
    return got.get("items") or []


def workloads(api: Api, ns: str, job_uid: str | None = None) -> list[dict]:
    """The namespace's Workloads (one list call), or those of one job (by Kueue's job-uid label)."""
    return _list(api, ns, WORKLOADS, f"{JOB_UID_LABEL}={job_uid}" if job_uid else None)


def newest(items: Sequence[dict]) -> dict | None:
    """A job has one Workload; while Kueue replaces one (a changed spec) the newer is the one that counts."""
    return max(items, key=lambda w: (w.get("metadata") or {}).get("creationTimestamp") or "", default=None)


def workload_events(api: Api, ns: str, workload: dict) -> list[dict]:
    """Kueue's events on the Workload, as served (no typed models)."""
    uid = (workload.get("metadata") or {}).get("uid")
    got = call("listing the Workload's events", lambda: raw(api.core.list_namespaced_event(
        ns, field_selector=f"involvedObject.uid={uid}", _preload_content=False)))
    return list(got.get("items") or [])


def local_queue(api: Api, ns: str, name: str) -> dict | None:
    return call(f"reading LocalQueue {name}", lambda: api.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, LOCAL_QUEUES, name), missing_ok=True)


def cluster_queue_of(api: Api, ns: str, local: str) -> str | None:
    """The ClusterQueue a LocalQueue feeds; None when it cannot be read (missing, or not this user's to read)."""
    try:
        lq = local_queue(api, ns, local)
    except ClusterError:
        return None
    return ((lq or {}).get("spec") or {}).get("clusterQueue")


def cluster_queue(api: Api, name: str) -> dict | None:
    return call(f"reading ClusterQueue {name}", lambda: api.custom.get_cluster_custom_object(
        GROUP, VERSION, CLUSTER_QUEUES, name), missing_ok=True)


def priority_classes(api: Api) -> list[dict]:
    return call("listing WorkloadPriorityClasses", lambda: api.custom.list_cluster_custom_object(
        GROUP, VERSION, PRIORITY_CLASSES))["items"]


def position(api: Api, ns: str, local: str, workload: str) -> int | None:
    """The Workload's position in its LocalQueue from the visibility API; None where it is not served."""
    path = f"/apis/{VISIBILITY_GROUP}/{VERSION}/namespaces/{{namespace}}/localqueues/{{name}}/pendingworkloads"
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


@dataclasses.dataclass(frozen=True)
class KueueReads:
    """What the cluster says of a queued job, as served: launcher/status/admission.py makes an Admission of it."""

    queue: str  # the LocalQueue the job's label names
    workload: dict | None = None  # the newest of its Workloads; None: Kueue has made none (yet)
    events: tuple[dict, ...] = ()  # Kueue's events on the Workload (Event JSON)
    cluster_queue: str | None = None  # the LocalQueue's, read only when the Workload names none (not admitted)
    position: int | None = None  # in the LocalQueue (visibility API), read only while the Workload waits
    error: str | None = None  # the Workload could not be read


def _waiting(workload: dict) -> bool:
    """Neither admitted (no quota assigned: status.admission) nor finished: the visibility API may list it."""
    status = workload.get("status") or {}
    done = any(c.get("type") == "Finished" and c.get("status") == "True" for c in status.get("conditions") or [])
    return not status.get("admission") and not done


def _admitted_to(workload: dict | None) -> str | None:
    return (((workload or {}).get("status") or {}).get("admission") or {}).get("clusterQueue")


def read_kueue(api: Api, ns: str, job: dict) -> KueueReads | None:
    """The job's Workload and what goes with it; None for a job without a queue label (no call is made).

    Calls: the job's Workloads by label, their events, the LocalQueue while the Workload names no
    ClusterQueue, and the visibility API while it waits.
    """
    queue = queue_name(job)
    if queue is None:
        return None
    try:
        workload = newest(workloads(api, ns, (job.get("metadata") or {}).get("uid")))
        events = workload_events(api, ns, workload) if workload is not None else []
    except ClusterError as e:
        return KueueReads(queue, error=f"cannot read its Workload: {e}")
    name = ((workload or {}).get("metadata") or {}).get("name")
    return KueueReads(queue, workload, tuple(events),
                      cluster_queue=cluster_queue_of(api, ns, queue) if _admitted_to(workload) is None else None,
                      position=position(api, ns, queue, name) if workload is not None and name and _waiting(
                          workload) else None)


def read_kueue_all(api: Api, ns: str, jobs: Sequence[dict]) -> dict[str, KueueReads]:
    """{job name: KueueReads} for `launch list`: one list of the namespace's Workloads, and only if a job is queued.

    No events and no positions (one call each per job); one LocalQueue read per queue, not per job.
    """
    queued = [j for j in jobs if queue_name(j) is not None]
    if not queued:
        return {}
    try:
        by_uid: dict[str, list[dict]] = {}
        for w in workloads(api, ns):
            by_uid.setdefault(((w.get("metadata") or {}).get("labels") or {}).get(JOB_UID_LABEL), []).append(w)
    except ClusterError as e:
        return {j["metadata"]["name"]: KueueReads(str(queue_name(j)), error=str(e)) for j in queued}
    cqs: dict[str, str | None] = {}
    out = {}
    for j in queued:
        q = str(queue_name(j))
        w = newest(by_uid.get(j["metadata"].get("uid"), []))
        if _admitted_to(w) is None and q not in cqs:
            cqs[q] = cluster_queue_of(api, ns, q)
        out[j["metadata"]["name"]] = KueueReads(q, w, cluster_queue=cqs.get(q) if _admitted_to(w) is None else None)
    return out


def create_workload(api: Api, ns: str, body: dict) -> dict:
    return call("creating the preempting Workload", lambda: api.custom.create_namespaced_custom_object(
        GROUP, VERSION, ns, WORKLOADS, body))


def read_workload(api: Api, ns: str, name: str) -> dict | None:
    return call(f"reading Workload {name}", lambda: api.custom.get_namespaced_custom_object(
        GROUP, VERSION, ns, WORKLOADS, name), missing_ok=True)


def delete_workload(api: Api, ns: str, name: str) -> None:
    call(f"deleting Workload {name}", lambda: api.custom.delete_namespaced_custom_object(
        GROUP, VERSION, ns, WORKLOADS, name, body={"propagationPolicy": "Background"}),
         missing_ok=True)

