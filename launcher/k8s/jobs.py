"""Training jobs on the cluster: create, read, their pods and state, touch, cancel, list."""

from __future__ import annotations

import time
from types import ModuleType
from typing import Any, Callable

from launcher import backends
from launcher.errors import ClusterError, SpecError
from launcher.k8s.api import Api, call, create_all, delete, raw, read
from launcher.records import natural_key, owner_uid, pod_backend, pod_container, replica_id  # noqa: F401
from trainer import contract


def create_job(api: Api, ns: str, objects: list[dict], *, probe: Callable[[dict], None] | None = None) -> None:
    """The job's companions (a TrainJob's own runtime), the job, then what it owns (code ConfigMap, PDB); all or none.

    A companion must exist before the job that names it (the Trainer's webhook looks its runtime up),
    so it is created first and made the job's own once the job has a UID.

    probe: given the server's answer to a dry-run create of the job (every admission webhook
    applied, nothing stored), made before the job and what it owns; raising stops the submit and
    removes the companions again. A job with no companions (a PyTorchJob, most TrainJobs) is then
    refused before anything exists. A TrainJob's own runtime has to exist first even for the dry
    run: the Trainer's webhook refuses a TrainJob whose runtime it cannot find.
    """
    from launcher.k8s.api import create, owner_reference, patch_owner

    kind = objects[0]["kind"]
    companions = [o for o in objects[1:] if o["kind"] in backends.CUSTOM_KINDS]
    rest = [o for o in objects if o not in companions]

    def conflict(obj: dict) -> str | None:
        name = obj["metadata"]["name"]
        return (f"a {obj['kind']} {name!r} exists in namespace {ns} already; pick another --name, "
                f"or `launch cancel {name} -n {ns}` first") if obj["kind"] in (kind, *backends.CUSTOM_KINDS) else None

    def what(obj: dict) -> str:
        return f"creating the {'code ConfigMap' if obj['kind'] == 'ConfigMap' else obj['kind']}"

    create_all(api, ns, companions, owner_kind="", conflict=conflict, what=what)
    try:
        if probe is not None:
            try:
                answer = create(api, ns, objects[0], dry_run=True,
                                what=f"checking the {kind} with a server-side dry run (nothing created)")
            except ClusterError as e:
                if e.status == 409:
                    raise SpecError(conflict(objects[0])) from e
                raise
            probe(answer)
        create_all(api, ns, rest, owner_kind=kind, conflict=conflict, what=what)
        if companions:
            job = read(api, ns, kind, objects[0]["metadata"]["name"])
            owner = owner_reference({**job, "apiVersion": objects[0]["apiVersion"], "kind": kind})
            for obj in companions:
                patch_owner(api, ns, obj, owner)
    except BaseException:
        for obj in reversed(companions):
            delete(api, ns, obj["kind"], obj["metadata"]["name"])
        raise


def get_job(api: Api, ns: str, name: str, *, required: bool = True,
            backend: ModuleType | None = None) -> dict | None:
    """The job of any backend (or of `backend`); without it SpecError naming `launch list`, or None when not `required`.

    One read for a PyTorchJob; a TrainJob costs the PyTorchJob read first (a 404, also where that
    CRD is not installed; a 403 where the user may not read that kind).
    """
    for b in [backend] if backend is not None else backends.BACKENDS.values():
        try:
            job = read(api, ns, b.KIND, name)
        except ClusterError as e:
            # Asked for any kind: one this user (a PyTorchJob schedule's submitter) may not read is
            # one they made no job of.
            if backend is not None or e.status != 403:
                raise
            job = None
        if job is not None:
            return job
    if required:
        kinds = (backend or backends.DEFAULT).KIND if backend is not None else " or ".join(
            b.KIND for b in backends.BACKENDS.values())
        raise SpecError(f"no {kinds} {name!r} in namespace {ns} (see `launch list -n {ns}`)")
    return None


def state(job: dict, kind: str | None = None) -> str:
    """The state of any job `launch` reads, by its kind (list items carry none: pass it).

    A training job's comes from its backend; a batch Job (a schedule's submitter run) is
    Succeeded, Failed or Active.
    """
    kind = kind or job.get("kind")
    if kind == "Job":
        for c in (job.get("status") or {}).get("conditions") or []:
            if c.get("status") == "True" and c.get("type") in ("Complete", "Failed"):
                return "Succeeded" if c["type"] == "Complete" else "Failed"
        return "Active"
    return backends.BY_KIND.get(kind, backends.DEFAULT).state(job)


def _owned_sorted(pods: list[Any], job_uid: str | None) -> list[Any]:
    if job_uid:
        pods = [p for p in pods if owner_uid(p) in (None, job_uid)]
    return sorted(pods, key=lambda p: natural_key(replica_id(p)))


def _pod_selector(name: str, backend: ModuleType) -> str:
    return f"{backend.POD_JOB_LABEL}={name}"


def job_pods(api: Api, ns: str, name: str, job_uid: str | None = None,
             backend: ModuleType = backends.DEFAULT) -> list[Any]:
    """The job's pods, one list call by label; with job_uid, only those it owns (not a same-named job's)."""
    return _owned_sorted(call("listing pods", lambda: api.core.list_namespaced_pod(
        ns, label_selector=_pod_selector(name, backend))).items, job_uid if backend.OWNS_PODS else None)


def job_pod_docs(api: Api, ns: str, name: str, job_uid: str | None = None,
                 backend: ModuleType = backends.DEFAULT) -> list[dict]:
    """job_pods as plain JSON dicts (the pod as the API serves it): one list call, no typed models."""
    return _owned_sorted(call("listing pods", lambda: raw(api.core.list_namespaced_pod(
        ns, label_selector=_pod_selector(name, backend), _preload_content=False)))["items"],
        job_uid if backend.OWNS_PODS else None)


#: An annotation whose only purpose is to change the job, so that its operator reconciles it.
TOUCHED_ANNOTATION = "kubetrain.dev/touched-at"


def touch_job(api: Api, ns: str, name: str, backend: ModuleType = backends.DEFAULT) -> None:
    """Change an annotation of the job, so that the operator looks at it again."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    call(f"annotating {backend.KIND} {name}", lambda: api.custom.patch_namespaced_custom_object(
        backend.GROUP, backend.VERSION, ns, backend.PLURAL, name,
        {"metadata": {"annotations": {TOUCHED_ANNOTATION: stamp}}}), missing_ok=True)


def cancel(api: Api, ns: str, name: str, backend: ModuleType | None = None, *, configmaps: tuple[str, ...] = ()) -> None:
    """Delete the job and everything labelled as its own (ConfigMaps, PDBs), not only what GC reaches.

    configmaps: ConfigMaps of the job's to delete by name too (its code ConfigMap: launcher/job/render.py names it).
    """
    job = get_job(api, ns, name, backend=backend)
    backend = backends.of(job)
    delete(api, ns, backend.KIND, name)
    for kind in backend.CUSTOM_KINDS:  # a TrainJob's own runtime: by name, not left to the garbage collector
        if kind != backend.KIND:
            delete(api, ns, kind, name)
    selector = f"{contract.LABEL_JOB}={name}"
    # By name too: a submit of the same name right after must not meet the old code ConfigMap
    # waiting for the garbage collector.
    cms = {cm.metadata.name for cm in call("listing ConfigMaps", lambda: api.core.list_namespaced_config_map(
        ns, label_selector=selector)).items} | set(configmaps)
    for cm in sorted(cms):
        delete(api, ns, "ConfigMap", cm)
    for pdb in call("listing PDBs", lambda: api.policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector)).items:
        delete(api, ns, "PodDisruptionBudget", pdb.metadata.name)


def list_jobs(api: Api, ns: str, *, selector: str | None = None, backend: ModuleType = backends.DEFAULT) -> list[dict]:
    """The jobs of `launch` in the namespace (or those matching `selector`), as the API serves them."""
    selector = selector or f"{contract.LABEL_MANAGED_BY}={contract.MANAGED_BY}"
    items = call(f"listing {backend.KIND}s", lambda: api.custom.list_namespaced_custom_object(
        backend.GROUP, backend.VERSION, ns, backend.PLURAL, label_selector=selector))["items"]
    # List items carry no kind: set it, so that each is read by its own backend.
    return [{**j, "kind": backend.KIND} for j in items]


def list_all_jobs(api: Api, ns: str, *, selector: str | None = None) -> list[dict]:
    """The jobs of `launch` of every kind the cluster has and the user may list; the first error if none."""
    out, missing = [], []
    for b in backends.BACKENDS.values():
        try:
            out += list_jobs(api, ns, selector=selector, backend=b)
        except ClusterError as e:
            if e.status not in (403, 404):  # not installed, or not this user's (a PyTorchJob schedule's submitter)
                raise
            missing.append(e)
    if len(missing) == len(backends.BACKENDS):
        raise missing[0]
    return out
