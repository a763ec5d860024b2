"""Faults `launch chaos JOB` does to a job's own pods and nodes: delete, evict, cordon."""

from __future__ import annotations

from typing import Any

from launcher.errors import ClusterError
from launcher.k8s.api import Api, call


def delete_pod(api: Api, ns: str, name: str, *, grace_seconds: int) -> None:
    call(f"deleting pod {name}", lambda: api.core.delete_namespaced_pod(
        name, ns, grace_period_seconds=grace_seconds), missing_ok=True)


def evict_pod(api: Api, ns: str, name: str, *, grace_seconds: int | None) -> str | None:
    """Evict through the Eviction API (PodDisruptionBudgets honoured); the refusal's message, or None.

    grace_seconds None: the pod's own terminationGracePeriodSeconds, as `kubectl drain` does.
    """
    body: dict[str, Any] = {"apiVersion": "policy/v1", "kind": "Eviction",
                            "metadata": {"name": name, "namespace": ns}}
    if grace_seconds is not None:
        body["deleteOptions"] = {"gracePeriodSeconds": grace_seconds}
    try:
        call(f"evicting pod {name}", lambda: api.core.create_namespaced_pod_eviction(name, ns, body),
             missing_ok=True)
    except ClusterError as e:
        if e.status == 429:  # "Cannot evict pod as it would violate the pod's disruption budget."
            return str(e)
        raise
    return None


def set_unschedulable(api: Api, node: str, unschedulable: bool) -> None:
    """Cordon (True) or uncordon (False) a node, as `kubectl cordon` does."""
    call(f"{'cordoning' if unschedulable else 'uncordoning'} node {node}", lambda: api.core.patch_node(
        node, {"spec": {"unschedulable": unschedulable or None}}))
