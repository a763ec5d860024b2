"""Pure manifest builders: spec in, dicts out. No clock, randomness, env or network.

`spec_to_objects(spec, name=..., code=..., image=...)` returns every object
`launch` creates for one job, in creation order; `--dry-run` prints exactly
this list. The pod (container, env, volumes, scheduling) is built here, once;
the job object around it comes from the backend (launcher/backends/).
"""

from __future__ import annotations

import base64
import dataclasses
from types import ModuleType
from typing import Any

from launcher import backends
from launcher.backends.protocol import RUNTIME_COMMAND, Backend, Pod
from launcher.job.spec import GPU_RESOURCE, JobSpec
from launcher.kueue import names as kueue
from trainer import contract

RUNTIME_UID = 1000  # the runtime image's non-root user (images/Dockerfile)

#: Spot/preemptible capacity labels: (label, value, taint effect or None) per provider.
SPOT_LABELS = (
    ("eks.amazonaws.com/capacityType", "SPOT", None),  # EKS managed node groups
    ("karpenter.sh/capacity-type", "spot", None),  # Karpenter (EKS)
    ("cloud.google.com/gke-spot", "true", "NoSchedule"),  # GKE Spot VMs (taint only when tainted pools are used)
    ("cloud.google.com/gke-preemptible", "true", "NoSchedule"),  # GKE preemptible VMs
    ("kubernetes.azure.com/scalesetpriority", "spot", "NoSchedule"),  # AKS spot node pools (always tainted)
)
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
GANG_SCHEDULER_NAMES = {"volcano": "volcano", "scheduler-plugins": "scheduler-plugins-scheduler"}


@dataclasses.dataclass(frozen=True)
class CodeRef:
    """Where the pod finds the code bundle: a ConfigMap of this job, or an object-store URI."""

    sha256: str
    entrypoint: str
    configmap_data: bytes | None = None
    uri: str | None = None


def labels(name: str) -> dict[str, str]:
    return {contract.LABEL_MANAGED_BY: contract.MANAGED_BY, contract.LABEL_JOB: name}


def _metadata(name: str, spec: JobSpec) -> dict[str, Any]:
    return {"name": name, "namespace": spec.namespace, "labels": labels(name)}


def code_configmap_name(name: str) -> str:
    return f"{name}-code"


def code_to_configmap(name: str, spec: JobSpec, code: CodeRef) -> dict[str, Any]:
    assert code.configmap_data is not None
    # Labelled with the job's name (not its own): `launch cancel` finds a job's objects by that label.
    meta = {**_metadata(code_configmap_name(name), spec), "labels": labels(name)}
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta,
            "binaryData": {contract.CODE_BUNDLE_NAME: base64.b64encode(code.configmap_data).decode()},
            "immutable": True}


def spec_to_pdb(spec: JobSpec, *, name: str, backend: ModuleType = backends.DEFAULT) -> dict[str, Any]:
    """At most one of the job's pods voluntarily disrupted at a time (drains go pod by pod).

    An integer minAvailable, not maxUnavailable: maxUnavailable makes the disruption
    controller read the owner's scale subresource, and the PyTorchJob's counts only
    Worker replicas, so a Master-only job could never be evicted (disruptionsAllowed 0,
    seen in the cluster tier) and a Master+Worker job could lose both pods at once. An
    elastic job may shrink to its minimum.
    """
    floor = spec.min_nodes if spec.min_nodes is not None else spec.nodes - 1
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(name, spec),
            "spec": {"minAvailable": floor, "selector": {"matchLabels": {backend.POD_JOB_LABEL: name}}}}


def runtime_env(spec: JobSpec, *, name: str, code: CodeRef | None) -> list[dict[str, Any]]:
    """The runtime's settings, by the names trainer.contract defines."""
    env = [
        (contract.ENV_RUN_ID, name),  # the job name: stable across the operator's restarts of this job
        # Who writes the run folder (its writer lease): every pod and restart of this job, and no job of
        # the same name in another namespace, which would otherwise share its run id.
        (contract.ENV_WRITER_ID, f"{spec.namespace}/{name}"),
        (contract.ENV_CHECKPOINT_EVERY_STEPS, str(spec.checkpoint_every_steps)),
        (contract.ENV_GRACE_SECONDS, _num(spec.grace_seconds)),
        (contract.ENV_HANG_TIMEOUT, _num(spec.hang_timeout)),
    ]
    if not spec.elastic:
        # The runtime's crash-loop budget and the PyTorchJob's backoffLimit: one number (the
        # operator does not enforce backoffLimit under restartPolicy ExitCode; the runtime does).
        # Not for elastic jobs: their pods carry no node rank, so each would judge every other
        # pod's running attempt as one that died, and the 5th pod to start would stop the job.
        env.append((contract.ENV_MAX_RESTARTS, str(spec.max_restarts)))
    if spec.checkpoint_uri:
        env.append((contract.ENV_CHECKPOINT_URI, spec.checkpoint_uri))
    if spec.metrics_port:
        env.append((contract.ENV_METRICS_PORT, str(spec.metrics_port)))
    if spec.in_place_restarts:  # off (0) is the runtime's default too: nothing to render
        env.append((contract.ENV_IN_PLACE_RESTARTS, str(spec.in_place_restarts)))
    if code is not None:
        env.append((contract.ENV_CODE_URI, code.uri or f"{contract.CODE_MOUNT_PATH}/{contract.CODE_BUNDLE_NAME}"))
        env.append((contract.ENV_CODE_SHA256, code.sha256))
    env += list(spec.env)
    return [{"name": k, "value": v} for k, v in env]


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


def _affinity(spec: JobSpec) -> dict[str, Any] | None:
    gpu_expr = ({"key": GPU_PRODUCT_LABEL, "operator": "In", "values": [spec.resources.gpu_type]}
                if spec.resources.gpu_type else None)
    spot_exprs = [{"key": k, "operator": "In", "values": [v]} for k, v, _ in SPOT_LABELS]
    node: dict[str, Any] = {}
    if spec.spot == "require":
        # Terms are ORed, expressions within a term ANDed: any provider's spot label, each with the GPU type.
        terms = [{"matchExpressions": ([gpu_expr] if gpu_expr else []) + [e]} for e in spot_exprs]
        node["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": terms}
    elif gpu_expr:
        node["requiredDuringSchedulingIgnoredDuringExecution"] = {"nodeSelectorTerms": [{"matchExpressions": [gpu_expr]}]}
    if spec.spot == "prefer":
        node["preferredDuringSchedulingIgnoredDuringExecution"] = [
            {"weight": 100, "preference": {"matchExpressions": [e]}} for e in spot_exprs]
    return {"nodeAffinity": node} if node else None


def _tolerations(spec: JobSpec) -> list[dict[str, Any]]:
    out = []
    if spec.resources.gpus_per_node:
        # GPU pools are tainted nvidia.com/gpu (MIG pools too) so that CPU pods stay off them.
        out.append({"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"})
    if spec.spot:
        out += [{"key": k, "operator": "Equal", "value": v, "effect": effect}
                for k, v, effect in SPOT_LABELS if effect]
    return out


def _container(spec: JobSpec, *, name: str, code: CodeRef | None, image: str) -> dict[str, Any]:
    r = spec.resources
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    if r.gpus_per_node:
        requests[r.gpu_resource] = limits[r.gpu_resource] = str(r.gpus_per_node)
    if r.cpu:
        requests["cpu"] = r.cpu
    if r.memory:
        requests["memory"] = limits["memory"] = r.memory
    script = code.entrypoint if code is not None else spec.script
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    if code is not None and code.configmap_data is not None:
        mounts.append({"name": "code", "mountPath": contract.CODE_MOUNT_PATH, "readOnly": True})
    # readOnly only when true: Go clients drop a false (omitempty), and a typed client that updates our
    # TrainJob (Kueue unsuspending it) then changes its runtimePatches, which Trainer v2 holds immutable.
    mounts += [{"name": f"pvc-{i}", "mountPath": v.mount_path, **({"readOnly": True} if v.read_only else {})}
               for i, v in enumerate(spec.volumes)]
    container: dict[str, Any] = {
        "name": contract.CONTAINER_NAME,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": [*RUNTIME_COMMAND, script, *spec.script_args],
        "env": runtime_env(spec, name=name, code=code),
        "resources": {k: v for k, v in (("requests", requests), ("limits", limits)) if v},
        "volumeMounts": mounts,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "runAsNonRoot": True,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
    }
    if spec.metrics_port:  # named, so the chart's PodMonitor finds it whatever the number
        container["ports"] = [{"name": contract.METRICS_PORT_NAME, "containerPort": spec.metrics_port}]
    if spec.secret_env:
        container["envFrom"] = [{"secretRef": {"name": s}} for s in spec.secret_env]
    return container


def _pod_template(spec: JobSpec, *, name: str, code: CodeRef | None, image: str) -> dict[str, Any]:
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.resources.shm}}]
    if code is not None and code.configmap_data is not None:
        volumes.append({"name": "code", "configMap": {"name": code_configmap_name(name)}})
    volumes += [{"name": f"pvc-{i}", "persistentVolumeClaim": {"claimName": v.claim,
                                                              **({"readOnly": True} if v.read_only else {})}}
                for i, v in enumerate(spec.volumes)]
    pod: dict[str, Any] = {
        "terminationGracePeriodSeconds": contract.termination_grace_period_seconds(spec.grace_seconds),
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUNTIME_UID, "runAsGroup": RUNTIME_UID,
                            "fsGroup": RUNTIME_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(spec, name=name, code=code, image=image)],
        "volumes": volumes,
        "automountServiceAccountToken": False,
    }
    if spec.service_account:
        pod["serviceAccountName"] = spec.service_account
    if spec.priority_class:
        pod["priorityClassName"] = spec.priority_class
    affinity = _affinity(spec)
    if affinity:
        pod["affinity"] = affinity
    tolerations = _tolerations(spec)
    if tolerations:
        pod["tolerations"] = tolerations
    if spec.gang:
        pod["schedulerName"] = GANG_SCHEDULER_NAMES[spec.gang]
    return {"metadata": {"labels": labels(name)}, "spec": pod}


def spec_to_objects(spec: JobSpec, *, name: str, code: CodeRef | None, image: str,
                    backend: Backend = backends.DEFAULT) -> list[dict[str, Any]]:
    """Everything one `launch` creates, job first (the others are owned by it once it exists; its
    companions, such as a TrainJob's own runtime, are created before it: launcher/k8s/jobs.py)."""
    script = code.entrypoint if code is not None else spec.script
    pod = Pod(_pod_template(spec, name=name, code=code, image=image), script=(script, *spec.script_args))
    # Kueue's labels on the job object only: it is the one Kueue makes a workload of.
    job_metadata = _metadata(name, spec)
    job_metadata["labels"].update(kueue.job_labels(spec.queue, spec.workload_priority))
    objects = [backend.render(spec, metadata=job_metadata, pod=pod),
               *backend.companions(spec, metadata=_metadata(name, spec), pod=pod)]
    if code is not None and code.configmap_data is not None:
        objects.append(code_to_configmap(name, spec, code))
    objects.append(spec_to_pdb(spec, name=name, backend=backend))
    return objects
