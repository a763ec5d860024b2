"""What `launch chaos JOB --kueue-preempt` submits, and whether Kueue will let it preempt (pure).

The preemptor is a bare Workload (no owner: Kueue admits it and preempts for it like any job's)
in the job's LocalQueue, one pod set asking for the job's share of the quota and all that is free
(`take`), at the lowest
WorkloadPriorityClass above the job's priority. Field names: Kueue v0.17.0, v1beta2
(spec.priorityClassRef replaced v1beta1's priorityClassName/priorityClassSource).
"""

from __future__ import annotations

import re
from typing import Sequence

from launcher.errors import SpecError
from launcher.kueue.checks import quantity
from launcher.status import admission as kueue

#: ClusterQueue preemption policies (spec.preemption.withinClusterQueue) under which a workload of
#: higher priority in the same ClusterQueue preempts; Kueue's default is Never.
PREEMPTING_POLICIES = ("LowerPriority", "LowerOrNewerEqualPriority")
#: Resource names counted as the job's accelerators (what the preemptor takes).
_ACCELERATOR = re.compile(r"(^|[./-])(gpu|tpu)s?($|[./-])|^(nvidia|amd)\.com/|^google\.com/tpu")
#: The preemptor's pod is never created (a bare Workload has no pods); an image is still required.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _usage(workload: dict) -> dict[tuple[str, str], float]:
    """{(resource, flavor): quantity} the admitted job holds (status.admission.podSetAssignments)."""
    held: dict[tuple[str, str], float] = {}
    for a in ((workload.get("status") or {}).get("admission") or {}).get("podSetAssignments") or []:
        flavors = a.get("flavors") or {}
        for resource, qty in (a.get("resourceUsage") or {}).items():
            key = (resource, flavors.get(resource, ""))
            held[key] = held.get(key, 0.0) + quantity(qty)
    return held


def _quota(cluster_queue: dict, resource: str, flavor: str) -> tuple[float, float]:
    """(nominal quota, reserved now) of `resource` in `flavor` of the ClusterQueue."""
    nominal = reserved = 0.0
    for group in (cluster_queue.get("spec") or {}).get("resourceGroups") or []:
        for f in group.get("flavors") or []:
            if f.get("name") == flavor:
                for r in f.get("resources") or []:
                    if r.get("name") == resource:
                        nominal = quantity(r.get("nominalQuota") or 0)
    for f in (cluster_queue.get("status") or {}).get("flavorsReservation") or []:
        if f.get("name") == flavor:
            for r in f.get("resources") or []:
                if r.get("name") == resource:
                    reserved = quantity(r.get("total") or 0)
    return nominal, reserved


def take(workload: dict, cluster_queue: dict) -> tuple[str, str] | None:
    """(resource, quantity) the preemptor asks for: the job's share plus all that is free, within nominal quota.

    The resource is the job's accelerators (else its CPU), in the flavor Kueue gave the job. Asking for
    only the job's share would be admitted without a preemption wherever that much is free; asking for
    more than the nominal quota would need borrowing, for which Kueue does not preempt within the
    ClusterQueue (its default borrowWithinCohort policy). None: the job holds nothing to take.
    """
    held = _usage(workload)
    accelerators = {k: v for k, v in held.items() if _ACCELERATOR.search(k[0]) and v > 0}
    candidates = accelerators or {k: v for k, v in held.items() if k[0] == "cpu" and v > 0}
    if not candidates:
        return None
    (resource, flavor), mine = max(candidates.items(), key=lambda kv: kv[1])
    nominal, reserved = _quota(cluster_queue, resource, flavor)
    size = min(nominal, mine + max(0.0, nominal - reserved)) if nominal else mine
    text = str(int(size)) if size == int(size) else f"{int(size * 1000)}m"
    return resource, text


def check_policy(cluster_queue: dict | None, name: str) -> None:
    """SpecError unless the ClusterQueue preempts lower-priority workloads within itself."""
    if cluster_queue is None:
        raise SpecError(f"ClusterQueue {name} cannot be read: --kueue-preempt checks its preemption policy first")
    policy = ((cluster_queue.get("spec") or {}).get("preemption") or {}).get("withinClusterQueue") or "Never"
    if policy not in PREEMPTING_POLICIES:
        raise SpecError(f"ClusterQueue {name} does not preempt within itself (preemption.withinClusterQueue is "
                        f"{policy}); set it to LowerPriority to try --kueue-preempt")


def higher_class(classes: Sequence[dict], priority: int) -> tuple[str, int] | None:
    """(name, value) of the lowest WorkloadPriorityClass above `priority`; None when there is none."""
    above = [(int(c.get("value") or 0), (c.get("metadata") or {}).get("name")) for c in classes
             if int(c.get("value") or 0) > priority]
    if not above:
        return None
    value, name = min(above)
    return name, value


def preemptor(job: str, ns: str, queue: str, resource: str, total: str, klass: str, value: int,
              suffix: str) -> dict:
    """The bare Workload that takes the job's quota: one pod set asking for `total` of `resource`."""
    name = f"{job[:40]}-kueue-preempt-{suffix}"
    return {"apiVersion": f"{kueue.GROUP}/{kueue.VERSION}", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubetrain.dev/kueue-preempt-of": job[:63]}},
            "spec": {"queueName": queue, "priority": value,
                     "priorityClassRef": {"group": kueue.GROUP, "kind": kueue.WORKLOAD_PRIORITY_CLASS_KIND,
                                          "name": klass},
                     "podSets": [{"name": "main", "count": 1, "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "hold", "image": PAUSE_IMAGE, "resources": {
                             "requests": {resource: total}, "limits": {resource: total}}}]}}}]}}


def evicted_by(workload: dict, preemptor_uid: str) -> bool:
    """Whether the job's Workload is evicted now by the preemptor's doing (its UID in the message)."""
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    ev = conds.get(kueue.EVICTED) or {}
    return ev.get("status") == "True" and preemptor_uid in (ev.get("message") or "")
