"""Kueue before `launch --queue` creates anything: what it reads, decided by launcher/kueue/checks.py.

(a) Kueue's CRDs are served at v1beta2, (b) the LocalQueue exists, (c) its ClusterQueue covers
the job's GPU resource, (d) the job can ever fit its quota, (e) counting only flavors of
--gpu-type, (g) the --priority WorkloadPriorityClass exists. Cluster-scoped reads a user may
not have (ClusterQueue, ResourceFlavor, WorkloadPriorityClass) are one warning and skipped:
Kueue itself still decides. (f), that Kueue manages the job's kind, is `managed_probe`: a
server-side dry run of the job itself, made by launcher/k8s/jobs.py create_job.
"""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Callable

from launcher import backends
from launcher.errors import ClusterError, SpecError
from launcher.k8s.api import Api, call
from launcher.kueue import checks, names


def _warn(line: str) -> None:
    print(f"launch: warning: {line}", file=sys.stderr)


def _get(api: Api, plural: str, name: str, ns: str | None = None) -> dict | None:
    """A Kueue object (None: not there); ClusterError, with its status, for anything else."""
    what = f"reading {plural[:-1]} {name}"
    if ns is None:
        return call(what, lambda: api.custom.get_cluster_custom_object(names.GROUP, names.VERSION, plural, name),
                    missing_ok=True)
    return call(what, lambda: api.custom.get_namespaced_custom_object(names.GROUP, names.VERSION, ns, plural, name),
                missing_ok=True)


def _names(api: Api, plural: str, ns: str | None = None) -> list[str] | None:
    """Names of the Kueue objects there are (None: this user may not list them)."""
    try:
        if ns is None:
            doc = call(f"listing {plural}", lambda: api.custom.list_cluster_custom_object(
                names.GROUP, names.VERSION, plural))
        else:
            doc = call(f"listing {plural}", lambda: api.custom.list_namespaced_custom_object(
                names.GROUP, names.VERSION, ns, plural))
    except ClusterError as e:
        if e.status == 403:
            return None
        raise
    return [i["metadata"]["name"] for i in (doc or {}).get("items") or []]


def _served_versions(api: Api, crd: str) -> list[str] | None:
    got = call(f"reading the {crd} CRD", lambda: api.ext.read_custom_resource_definition(crd), missing_ok=True)
    return None if got is None else [v.name for v in got.spec.versions or [] if v.served]


def _forbidden_ok(read: Callable[[], Any], what: str) -> tuple[bool, Any]:
    """(True, read()) or, when the user may not read it, (False, None) after one warning line."""
    try:
        return True, read()
    except ClusterError as e:
        if e.status != 403:
            raise
        _warn(f"may not read {what} (forbidden): not checked; Kueue decides when the job is queued")
        return False, None


def preflight(api: Api, spec: Any, backend: ModuleType, job: dict) -> None:
    """Refuse (SpecError) a --queue job Kueue cannot take; warn where this user may not look."""
    if not spec.queue:
        return
    problem = checks.missing_api({crd: _served_versions(api, crd) for crd in names.CRDS})
    if problem:
        raise SpecError(problem)
    ns, queue = spec.namespace, spec.queue
    readable, lq = _forbidden_ok(lambda: _get(api, names.LOCAL_QUEUE, queue, ns), f"LocalQueue {ns}/{queue}")
    if readable and lq is None:
        raise SpecError(checks.no_local_queue(queue, ns, _names(api, names.LOCAL_QUEUE, ns) or []))
    if lq is not None and spec.total_gpus:
        _check_quota(api, spec, backend, job, str((lq.get("spec") or {}).get("clusterQueue") or ""))
    if spec.workload_priority:
        name = spec.workload_priority
        readable, wpc = _forbidden_ok(lambda: _get(api, names.PRIORITY_CLASS, name),
                                      f"WorkloadPriorityClass {name}")
        if readable and wpc is None:
            raise SpecError(checks.no_priority_class(name, _names(api, names.PRIORITY_CLASS)))


def _check_quota(api: Api, spec: Any, backend: ModuleType, job: dict, cq_name: str) -> None:
    readable, cq = _forbidden_ok(lambda: _get(api, names.CLUSTER_QUEUE, cq_name), f"ClusterQueue {cq_name}")
    if not readable:
        return
    if cq is None:
        raise SpecError(f"--queue {spec.queue}: its ClusterQueue {cq_name!r} does not exist, so Kueue admits "
                        "nothing from it; ask your Kueue admin, or use another --queue")
    flavor_labels: dict[str, dict | None] = {}
    if spec.resources.gpu_type:
        for group in (cq.get("spec") or {}).get("resourceGroups") or []:
            for flavor in group.get("flavors") or []:
                name = flavor.get("name")
                try:
                    rf = _get(api, names.RESOURCE_FLAVOR, name)
                except ClusterError as e:
                    if e.status != 403:
                        raise
                    rf = None  # not ours to read: the flavor counts
                flavor_labels[name] = ((rf or {}).get("spec") or {}).get("nodeLabels")
    per_pod = spec.resources.gpus_per_node
    problem = checks.quota_problem(cq, queue=spec.queue, resource=spec.resources.gpu_resource,
                                   podsets=[n * per_pod for n in backend.podsets(job)],
                                   gpu_type=spec.resources.gpu_type, flavor_labels=flavor_labels)
    if problem:
        raise SpecError(problem)


def managed_probe(backend: ModuleType) -> Callable[[dict], None]:
    """What create_job does with the server's answer to a dry-run create of a --queue job.

    Kueue's mutating webhook suspends, on create, every job of a kind it manages that carries
    a queue label; the dry run goes through the same webhooks and returns the job as they left
    it. Not suspended: Kueue ignores the kind here, and the job would run at once, outside quota.
    """
    others = {n: b.KUEUE_FRAMEWORK for n, b in backends.BACKENDS.items() if b is not backend}

    def probe(answer: dict) -> None:
        if not backend.suspended(answer):
            raise SpecError(checks.unmanaged(backend.KIND, backend.KUEUE_FRAMEWORK, others))

    return probe


def probe_ahead(api: Api, ns: str, objects: list[dict], backend: ModuleType) -> bool:
    """The managed-kind probe for a job created later (a schedule's runs), now; False when it cannot be made yet.

    A TrainJob with a runtime of its own cannot be dry-run before that runtime exists (the
    Trainer's webhook looks it up); its submitter probes each run before creating it instead.
    """
    from launcher.k8s.api import create

    if any(o["kind"] in backends.CUSTOM_KINDS for o in objects[1:]):
        return False
    managed_probe(backend)(create(api, ns, objects[0], dry_run=True, what=(
        f"checking a {backend.KIND} of this schedule with a server-side dry run (nothing created)")))
    return True
