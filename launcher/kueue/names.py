"""Kueue's API facts, each named once: its group and version, the labels a job carries, its kinds.

From Kueue v0.17.0 (apis/kueue/v1beta2): a job joins a LocalQueue by the label QUEUE_LABEL on
the job object, and takes a WorkloadPriorityClass by PRIORITY_LABEL. Kueue's mutating
webhook suspends the job on create and unsuspends it when the workload is admitted, so
`launch` never sets suspend itself. Which job kinds Kueue manages is its own configuration
(integrations.frameworks); each backend names its framework (KUEUE_FRAMEWORK).
"""

from __future__ import annotations

from typing import Any

from trainer import contract

GROUP, VERSION = "kueue.x-k8s.io", "v1beta2"
API_VERSION = f"{GROUP}/{VERSION}"
#: On the job object's metadata: the LocalQueue (namespaced) the job waits in.
QUEUE_LABEL = f"{GROUP}/queue-name"
#: On the job object's metadata: the WorkloadPriorityClass (cluster-scoped) of its workload.
PRIORITY_LABEL = f"{GROUP}/priority-class"
#: On a Workload, set by Kueue: its job's metadata.uid (one list call finds a job's Workload).
JOB_UID_LABEL = f"{GROUP}/job-uid"
WORKLOAD_PRIORITY_CLASS_KIND = "WorkloadPriorityClass"
#: Kueue's visibility API (pending workloads and their positions), where a cluster aggregates it.
VISIBILITY_GROUP = f"visibility.{GROUP}"
#: kind -> plural, and whether it is namespaced: the kinds `launch` reads.
LOCAL_QUEUE, CLUSTER_QUEUE, RESOURCE_FLAVOR, PRIORITY_CLASS, WORKLOAD = (
    "localqueues", "clusterqueues", "resourceflavors", "workloadpriorityclasses", "workloads")
#: The CRDs a cluster with Kueue serves, of those `launch` reads.
CRDS = tuple(f"{plural}.{GROUP}" for plural in (LOCAL_QUEUE, CLUSTER_QUEUE, RESOURCE_FLAVOR, PRIORITY_CLASS))


def queue_name(job: dict) -> str | None:
    """The LocalQueue a job's QUEUE_LABEL names; None: the job is not behind Kueue."""
    return ((job.get("metadata") or {}).get("labels") or {}).get(QUEUE_LABEL) or None


def job_labels(queue: str | None, priority: str | None) -> dict[str, str]:
    """The labels that put a job in `queue` with `priority` (none without a queue)."""
    if not queue:
        return {}
    return {QUEUE_LABEL: queue, **({PRIORITY_LABEL: priority} if priority else {})}


def local_queue(name: str, namespace: str, cluster_queue: str) -> dict[str, Any]:
    """A LocalQueue pointing at `cluster_queue` (the Helm chart renders this, scripts/gen-chart)."""
    return {"apiVersion": API_VERSION, "kind": "LocalQueue",
            "metadata": {"name": name, "namespace": namespace, "labels": {contract.LABEL_MANAGED_BY: contract.MANAGED_BY}},
            "spec": {"clusterQueue": cluster_queue}}
