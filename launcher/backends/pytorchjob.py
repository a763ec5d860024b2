"""Kubeflow Training Operator v1's PyTorchJob (kubeflow.org/v1): Master + Workers, or elastic Workers.

What the launcher knows about this kind, in one place: its API coordinates, how a
JobSpec becomes one, how to read its state and replicas back, the labels the
operator puts on its pods and the event it records when a container exits.
Pure: dicts in, dicts out.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from launcher.backends.protocol import JobShape, Pod
from trainer import contract

KIND = "PyTorchJob"
GROUP, VERSION, PLURAL = "kubeflow.org", "v1", "pytorchjobs"
API_VERSION = f"{GROUP}/{VERSION}"
CRD_NAME = f"{PLURAL}.{GROUP}"
CRD_MISSING = ("install the Kubeflow training operator (kubectl apply --server-side -k "
               "\"github.com/kubeflow/training-operator/manifests/overlays/standalone\")")
#: Every custom kind this backend creates: kind -> (group, version, plural).
CUSTOM_KINDS = {KIND: (GROUP, VERSION, PLURAL)}
#: The container of ours in each replica's pod (the one the operator fills: MASTER_ADDR, ...).
CONTAINER = contract.CONTAINER_NAME
#: The job is its pods' controller (ownerReferences): a same-named earlier job's pods are told apart by UID.
OWNS_PODS = True
#: The operator labels each pod with its job's name, replica type and index.
POD_JOB_LABEL = contract.OPERATOR_JOB_NAME_LABEL
#: What a schedule's submitter does with this kind (launcher/schedule/render.py holds the rest of its Role).
SUBMITTER_RULES: tuple[dict[str, Any], ...] = (
    # patch: an annotation that makes the operator look at a run past its deadline again
    # (launcher/schedule/submitter.py, wait_for); the operator v1.8 checks the deadline only then.
    {"apiGroups": [GROUP], "resources": [PLURAL], "verbs": ["create", "get", "list", "delete", "patch"]},
    # The run's ConfigMap and PDB name the PyTorchJob as owner with blockOwnerDeletion, which the
    # OwnerReferencesPermissionEnforcement admission plugin (OpenShift, hardened clusters) allows only
    # to those who may update the owner's finalizers.
    {"apiGroups": [GROUP], "resources": [f"{PLURAL}/finalizers"], "verbs": ["update"]},
)
# The operator's event on the job each time it sees a container exit.
_EXITED = re.compile(r"Pod: [^.\s]+\.(\S+) exited with code (-?\d+)")

#: The rank-0 pod's replica (`launch chaos --kill-pod master`).
FIRST_REPLICA = "master-0"
#: Kueue's name for this kind (integrations.frameworks in its Configuration), v0.17.0.
KUEUE_FRAMEWORK = "kubeflow.org/pytorchjob"
#: Flags a PyTorchJob cannot honour: none.
IGNORED_FLAGS: dict[str, str] = {}
#: No other object counts its restarts: they are counted from its pods (launcher/status/counting.py).
RESTART_RECORD: tuple[str, str, str] | None = None


def render(spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> dict[str, Any]:
    """The PyTorchJob of a JobSpec (launcher/job/spec.py): restartPolicy ExitCode on every replica."""

    def replica(count: int) -> dict[str, Any]:
        # ExitCode: the operator retries 128-255 (preemption, signals, our hang/infra codes), not 1-127.
        # A copy per replica type, so that YAML output has no anchors and edits stay local.
        return {"replicas": count, "restartPolicy": "ExitCode", "template": copy.deepcopy(pod.template)}

    run_policy: dict[str, Any] = {"backoffLimit": spec.max_restarts, "cleanPodPolicy": spec.clean_pod_policy}
    if spec.active_deadline_seconds:
        run_policy["activeDeadlineSeconds"] = spec.active_deadline_seconds
    if spec.ttl_seconds_after_finished:
        run_policy["ttlSecondsAfterFinished"] = spec.ttl_seconds_after_finished
    if spec.gang:
        policy: dict[str, Any] = {"minAvailable": spec.min_nodes or spec.nodes}
        if spec.priority_class:
            policy["priorityClass"] = spec.priority_class
        run_policy["schedulingPolicy"] = policy
    job_spec: dict[str, Any] = {"runPolicy": run_policy, "nprocPerNode": str(spec.nproc_per_node)}
    if spec.elastic:
        job_spec["elasticPolicy"] = {"minReplicas": spec.min_nodes, "maxReplicas": spec.nodes, "rdzvBackend": "c10d",
                                     "maxRestarts": spec.max_restarts}
        job_spec["pytorchReplicaSpecs"] = {"Worker": replica(spec.nodes)}
    else:
        replicas = {"Master": replica(1)}
        if spec.nodes > 1:
            replicas["Worker"] = replica(spec.nodes - 1)
        job_spec["pytorchReplicaSpecs"] = replicas
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": job_spec}


def companions(spec: JobShape, *, metadata: dict[str, Any], pod: Pod) -> list[dict[str, Any]]:
    """Nothing: a PyTorchJob carries its whole pod template."""
    return []


def _replica_specs(job: dict) -> dict[str, dict]:
    return (job.get("spec") or {}).get("pytorchReplicaSpecs") or {}


def state(job: dict) -> str:
    """The type of the newest true condition (Created, Running, Restarting, Succeeded, Failed), else Pending."""
    conds = (job.get("status") or {}).get("conditions") or []
    true = [c for c in conds if c.get("status") == "True"]
    return true[-1]["type"] if true else "Pending"


def pod_templates(job: dict) -> list[dict]:
    """The pod template of each replica type, Master first: its log tells the job's progress."""
    specs = _replica_specs(job)
    return [specs[t].get("template") or {} for t in sorted(specs, key=lambda t: t != "Master")]


def add_env(job: dict, env: list[dict]) -> None:
    """Append env to our container in every replica type (a schedule's warm start)."""
    for template in pod_templates(job):
        for c in template["spec"]["containers"]:
            if c["name"] == CONTAINER:
                c["env"] = c["env"] + copy.deepcopy(env)


def replica_names(job: dict) -> set[str]:
    """Every pod name the spec asks for: the operator names them <job>-<replica type>-<index>."""
    name = job["metadata"]["name"]
    return {f"{name}-{rtype.lower()}-{i}" for rtype, s in _replica_specs(job).items()
            for i in range(s.get("replicas") or 1)}


def replica_id(labels: Mapping[str, str]) -> str:
    """`worker-3`: a pod's replica type and index, from the labels the operator sets."""
    rtype = labels.get(contract.OPERATOR_REPLICA_TYPE_LABEL, "pod")
    return f"{rtype.lower()}-{labels.get(contract.OPERATOR_REPLICA_INDEX_LABEL, '?')}"


def expected_pods(job: dict) -> int:
    """Pods of every replica type, as the spec asks (an elastic job: its maximum)."""
    return sum(s.get("replicas") or 1 for s in _replica_specs(job).values())


def min_pods(job: dict) -> int:
    """Pods the job needs running: every replica, or an elastic job's minimum."""
    elastic = ((job.get("spec") or {}).get("elasticPolicy") or {}).get("minReplicas")
    if elastic:
        return int(elastic)
    return sum(int(s.get("replicas") or 1) for s in _replica_specs(job).values())


def retry_limit(job: dict) -> int | None:
    """runPolicy.backoffLimit: the restarts the operator allows (None: not set)."""
    return ((job.get("spec") or {}).get("runPolicy") or {}).get("backoffLimit")


def suspended(job: dict) -> bool:
    """spec.runPolicy.suspend: set by Kueue's webhook on create (never by launch), cleared on admission."""
    return bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))


def podsets(job: dict) -> list[int]:
    """Pods of each pod set as Kueue counts them: one pod set per replica type, Master first."""
    specs = _replica_specs(job)
    return [int(specs[t].get("replicas") or 1) for t in sorted(specs, key=lambda t: t != "Master")]


def deadline(job: dict) -> tuple[float | None, str | None]:
    """(runPolicy.activeDeadlineSeconds, status.startTime as RFC 3339), each None when not set."""
    return (((job.get("spec") or {}).get("runPolicy") or {}).get("activeDeadlineSeconds"),
            (job.get("status") or {}).get("startTime"))


def exit_event(event: dict) -> tuple[str, int] | None:
    """(pod name, exit code) when the event is the operator's record of a container's exit."""
    m = event.get("reason") == "ExitedWithCode" and _EXITED.search(event.get("message") or "")
    return (m.group(1), int(m.group(2))) if m else None


def restarts(record: dict | None) -> tuple[int, int] | None:
    """None: the operator keeps no restart count of its own (RESTART_RECORD is None)."""
    return None
