"""What `launch status` (and chaos) read from the cluster, as the API served it: no summarising here.

One read of the job, its pods (launcher/k8s/pods.py: the Table's columns, their metadata in
protobuf), one list call per kind of event, one log, a TrainJob's JobSet, and Kueue's Workload
for a queued job (launcher/k8s/kueue.py). launcher/status/build.py makes a JobStatus of the `StatusReads`.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType

from launcher import backends
from launcher.errors import ClusterError
from launcher.k8s import kueue
from launcher.k8s.api import Api, call, raw
from launcher.k8s.jobs import job_pod_docs
from launcher.k8s.pods import status_pods
from trainer import contract

#: Lines of the first replica's log read for its newest committed step.
LOG_TAIL = 500
#: Phases of a pod that has a log to read.
LOGGED_PHASES = ("Running", "Succeeded", "Failed")


@dataclasses.dataclass(frozen=True)
class StatusReads:
    namespace: str
    job: dict  # the job object
    pods: tuple[dict, ...]  # pod JSON (settled pods slim: launcher/k8s/pods.py), the job's own, natural order
    job_events: tuple[dict, ...]  # Event JSON on the job (by its UID)
    pod_events: tuple[dict, ...]  # Event JSON on the namespace's pods
    log: tuple[str, ...] | None  # the first replica's log tail (--timestamps); None: none read
    jobset: dict | None  # a backend's restart record (a TrainJob's JobSet); None: none, or not ours to read
    kueue: kueue.KueueReads | None  # None: the job is not behind Kueue


def list_events(api: Api, ns: str, field_selector: str) -> list[dict]:
    """Events by field selector, every page of them, as plain JSON (no typed models)."""
    out: list[dict] = []
    token = None
    while True:
        got = call("listing events", lambda: raw(api.core.list_namespaced_event(
            ns, field_selector=field_selector, limit=1000, _continue=token, _preload_content=False)))
        out += got.get("items") or []
        token = (got.get("metadata") or {}).get("continue")
        if not token:
            return out


def job_events(api: Api, ns: str, job: dict) -> list[dict]:
    """The events on the job (by UID): the operator's exits and FailedCreate*."""
    return list_events(api, ns, f"involvedObject.uid={job['metadata'].get('uid')}")


def pod_events(api: Api, ns: str) -> list[dict]:
    return list_events(api, ns, "involvedObject.kind=Pod")


def log_tail(api: Api, ns: str, pod: str, container: str = contract.CONTAINER_NAME) -> list[str]:
    """The last LOG_TAIL lines of a pod's log, each with the kubelet's timestamp ([] when there is none)."""
    text = call(f"reading logs of {pod}", lambda: api.core.read_namespaced_pod_log(
        pod, ns, container=container, tail_lines=LOG_TAIL, timestamps=True), missing_ok=True)
    return (text or "").splitlines()


def restart_record(api: Api, ns: str, job: dict, backend: ModuleType) -> dict | None:
    """The object a backend keeps its restart count on (a TrainJob's JobSet); None without one or the right to it."""
    if backend.RESTART_RECORD is None:
        return None
    group, version, plural = backend.RESTART_RECORD
    name = job["metadata"]["name"]
    try:
        return call(f"reading the {plural} {name}", lambda: api.custom.get_namespaced_custom_object(
            group, version, ns, plural, name), missing_ok=True)
    except ClusterError:
        return None  # no right to read it: status stands on the pods alone


def read(api: Api, ns: str, job: dict) -> StatusReads:
    """Everything `launch status` shows of `job` (launcher/k8s/jobs.get_job's), as served."""
    backend = backends.of(job)
    uid = job["metadata"].get("uid")
    pods = status_pods(api, ns, job["metadata"]["name"], uid, backend)
    # The newest committed step, from the first replica's log: one log read, not one per pod.
    first = next((p for p in pods if (p.get("status") or {}).get("phase") in LOGGED_PHASES), None)
    log = None
    if first is not None:
        try:
            log = tuple(log_tail(api, ns, first["metadata"]["name"], backend.CONTAINER))
        except ClusterError:
            pass  # logs are a bonus here; the status stands without them
    return StatusReads(namespace=ns, job=job, pods=tuple(pods), job_events=tuple(job_events(api, ns, job)),
                       pod_events=tuple(pod_events(api, ns)), log=log,
                       jobset=restart_record(api, ns, job, backend), kueue=kueue.read_kueue(api, ns, job))


def read_pods_and_events(api: Api, ns: str, job: dict) -> tuple[list[dict], list[dict]]:
    """The job's pods (whole JSON) and the namespace's pod events: what its pod recreations are counted from."""
    backend = backends.of(job)
    return (job_pod_docs(api, ns, job["metadata"]["name"], job["metadata"].get("uid"), backend),
            pod_events(api, ns))
