"""Checks before anything is created: the CRDs, the namespace, its quota, Secrets, PVCs, priority class, Kueue."""

from __future__ import annotations

import sys
from types import ModuleType
from typing import Any, Protocol, Sequence

from launcher import backends
from launcher.errors import ClusterError, SpecError
from launcher.k8s.api import Api, call


class Claim(Protocol):
    @property
    def claim(self) -> str: ...


class Resources(Protocol):
    @property
    def gpu_resource(self) -> str: ...


class Ask(Protocol):
    """What preflight reads of a job's spec (launcher/job/spec.py's JobSpec has it): passed in, not imported."""

    @property
    def namespace(self) -> str: ...
    @property
    def nodes(self) -> int: ...
    @property
    def total_gpus(self) -> int: ...
    @property
    def gang(self) -> str | None: ...
    @property
    def priority_class(self) -> str | None: ...
    @property
    def queue(self) -> str | None: ...
    @property
    def secret_env(self) -> Sequence[str]: ...
    @property
    def volumes(self) -> Sequence[Claim]: ...
    @property
    def resources(self) -> Resources: ...

#: The PodGroup CRD each --gang scheduler brings; without it the pods wait for a scheduler that is not there.
GANG_PODGROUP_CRDS = {"volcano": "podgroups.scheduling.volcano.sh",
                      "scheduler-plugins": "podgroups.scheduling.x-k8s.io"}
INIT_CONTAINER_TEMPLATE = "k8s/operator/pytorch-init-container.yaml.tmpl"


def _quantity(value: str) -> float:
    from kubernetes.utils import parse_quantity

    return float(parse_quantity(value))


def gpu_quota_room(quotas: list[Any], resource: str) -> float | None:
    """The smallest room left for `resource` across ResourceQuotas (None: no quota limits it)."""
    room = None
    for q in quotas:
        hard = (q.status.hard if q.status and q.status.hard else q.spec.hard) or {}
        used = (q.status.used if q.status and q.status.used else {}) or {}
        for key in (f"requests.{resource}", f"limits.{resource}"):
            if key in hard:
                left = _quantity(hard[key]) - _quantity(used.get(key, "0"))
                room = left if room is None else min(room, left)
    return room


def namespace_quota_room(api: Api, ns: str, resource: str) -> float | None:
    """Room left for `resource` under the namespace's ResourceQuotas (reads nothing cluster-scoped)."""
    quotas = call(f"listing ResourceQuotas in {ns}", lambda: api.core.list_namespaced_resource_quota(ns)).items
    return gpu_quota_room(quotas, resource)


def pod_security_warning(namespace_labels: dict, pods: int) -> str | None:
    """A namespace that enforces Pod Security `restricted` refuses the operator's own init container
    on worker pods (it has no securityContext) unless the cluster runs the operator with our template."""
    if pods > 1 and namespace_labels.get("pod-security.kubernetes.io/enforce") == "restricted":
        return ("the namespace enforces Pod Security 'restricted': the training operator's own init-pytorch "
                "container is refused there, so worker pods are never created unless the operator runs with "
                f"--pytorch-init-container-template-file={INIT_CONTAINER_TEMPLATE} (see README)")
    return None


def _has_crd(api: Api, name: str) -> bool:
    return call(f"reading the {name} CRD", lambda: api.ext.read_custom_resource_definition(name),
                missing_ok=True) is not None


def cluster_runtime_missing(api: Api, job: dict) -> str | None:
    """What to do when the job names a ClusterTrainingRuntime the cluster lacks (None: there, or not ours to read)."""
    ref = (job.get("spec") or {}).get("runtimeRef") or {}
    if ref.get("kind") != "ClusterTrainingRuntime":
        return None
    try:
        got = call(f"reading ClusterTrainingRuntime {ref['name']}", lambda: api.custom.get_cluster_custom_object(
            ref.get("apiGroup"), job["apiVersion"].split("/")[1], "clustertrainingruntimes", ref["name"]),
            missing_ok=True)
    except ClusterError as e:
        if e.status == 403:  # may not read cluster-scoped objects: the Trainer's webhook will say
            return None
        raise
    return None if got is not None else (
        f"the cluster has no ClusterTrainingRuntime {ref['name']!r}: install k8s/trainjob/clustertrainingruntime.yaml "
        "(kubectl apply --server-side -f), or its Helm chart")


def preflight(api: Api, spec: Ask, backend: ModuleType = backends.DEFAULT, job: dict | None = None) -> None:
    """Refuse before creating anything: CRD (and a TrainJob's runtime), namespace, quota, Secrets, PVCs, priority
    class, and with --queue Kueue's (launcher/k8s/kueue_preflight.py; `job`, the rendered job, gives its pod sets)."""
    ns = spec.namespace
    if call(f"reading the {backend.KIND} CRD", lambda: api.ext.read_custom_resource_definition(backend.CRD_NAME),
            missing_ok=True) is None:
        raise SpecError(f"the cluster has no {backend.CRD_NAME} CRD: {backend.CRD_MISSING}")
    missing = cluster_runtime_missing(api, job) if job is not None else None
    if missing:
        raise SpecError(missing)
    if spec.gang and not _has_crd(api, GANG_PODGROUP_CRDS[spec.gang]):
        raise SpecError(f"--gang {spec.gang}: the cluster has no {GANG_PODGROUP_CRDS[spec.gang]} CRD, so {spec.gang} "
                        "is not installed and the pods would wait forever; install it or drop --gang")
    namespace = call(f"reading namespace {ns}", lambda: api.core.read_namespace(ns), missing_ok=True)
    if namespace is None:
        raise SpecError(f"namespace {ns!r} does not exist; create it or pass --namespace")
    # The training operator's init container; a TrainJob's pods have none.
    warning = pod_security_warning((namespace.metadata.labels or {}), spec.nodes) if backend is backends.DEFAULT else None
    if warning:
        print(f"launch: warning: {warning}", file=sys.stderr)
    need = spec.total_gpus
    if need:
        room = namespace_quota_room(api, ns, spec.resources.gpu_resource)
        if room is not None and room < need:
            raise SpecError(f"namespace {ns} has room for {room:g} {spec.resources.gpu_resource} under its "
                            f"ResourceQuota, the job asks for {need}; ask for fewer with --gpus or free some")
    for secret in spec.secret_env:
        if call(f"reading Secret {secret}", lambda: api.core.read_namespaced_secret(secret, ns),
                missing_ok=True) is None:
            raise SpecError(f"--secret-env {secret}: no such Secret in namespace {ns}")
    for vol in spec.volumes:
        if call(f"reading PVC {vol.claim}", lambda: api.core.read_namespaced_persistent_volume_claim(vol.claim, ns),
                missing_ok=True) is None:
            raise SpecError(f"--pvc {vol.claim}: no such PersistentVolumeClaim in namespace {ns}")
    if spec.priority_class and call(f"reading PriorityClass {spec.priority_class}",
                                    lambda: api.scheduling.read_priority_class(spec.priority_class),
                                    missing_ok=True) is None:
        raise SpecError(f"--priority-class {spec.priority_class}: no such PriorityClass")
    if spec.queue:
        from launcher.k8s import kueue_preflight

        kueue_preflight.preflight(api, spec, backend, job or {})
