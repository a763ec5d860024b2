"""What `launch chaos JOB --kueue-preempt` submits, and whether Kueue will let it preempt (pure).

The preemptor is a bare Workload (no owner: Kueue admits it and preempts for it like any job's)
in the job's LocalQueue, one pod set asking for all the job's accelerators, at the lowest
WorkloadPriorityClass above the job's priority. Field names: Kueue v0.17.0, v1beta2
(spec.priorityClassRef replaced v1beta1's priorityClassName/priorityClassSource).
"""

from __future__ import annotations

import re
from typing import Sequence

from launcher.errors import SpecError
from launcher.status import admission as kueue

#: ClusterQueue preemption policies (spec.preemption.withinClusterQueue) under which a workload of
#: higher priority in the same ClusterQueue preempts; Kueue's default is Never.
PREEMPTING_POLICIES = ("LowerPriority", "LowerOrNewerEqualPriority")
#: Resource names counted as the job's accelerators (what the preemptor takes).
_ACCELERATOR = re.compile(r"(^|[./-])(gpu|tpu)s?($|[./-])|^(nvidia|amd)\.com/|^google\.com/tpu")
#: The preemptor's pod is never created (a bare Workload has no pods); an image is still required.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def _quantity(text: object) -> int:
    try:
        return int(str(text))
    except ValueError:
        raise SpecError(f"accelerator quantity {text!r} is not a whole number") from None


def accelerators(workload: dict) -> tuple[str, int] | None:
    """(resource, total) of the accelerators the job's pods ask for (the Workload's pod sets: the job's pods)."""
    totals: dict[str, int] = {}
    for ps in (workload.get("spec") or {}).get("podSets") or []:
        count = int(ps.get("count") or 1)
        for c in ((ps.get("template") or {}).get("spec") or {}).get("containers") or []:
            res = c.get("resources") or {}
            asked = {**(res.get("limits") or {}), **(res.get("requests") or {})}  # requests default to limits
            for name, qty in asked.items():
                if _ACCELERATOR.search(name):
                    totals[name] = totals.get(name, 0) + count * _quantity(qty)
    if not totals:
        return None
    return max(totals.items(), key=lambda kv: kv[1])


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


def preemptor(job: str, ns: str, queue: str, resource: str, total: int, klass: str, value: int,
              suffix: str) -> dict:
    """The bare Workload that takes the job's accelerators: one pod set, `total` of `resource`."""
    name = f"{job[:40]}-kueue-preempt-{suffix}"
    return {"apiVersion": f"{kueue.GROUP}/{kueue.VERSION}", "kind": "Workload",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubetrain.dev/kueue-preempt-of": job[:63]}},
            "spec": {"queueName": queue, "priority": value,
                     "priorityClassRef": {"group": kueue.GROUP, "kind": kueue.WORKLOAD_PRIORITY_CLASS_KIND,
                                          "name": klass},
                     "podSets": [{"name": "main", "count": 1, "template": {"spec": {
                         "restartPolicy": "Never",
                         "containers": [{"name": "hold", "image": PAUSE_IMAGE, "resources": {
                             "requests": {resource: str(total)}, "limits": {resource: str(total)}}}]}}}]}}


def evicted_by(workload: dict, preemptor_uid: str) -> bool:
    """Whether the job's Workload is evicted now by the preemptor's doing (its UID in the message)."""
    conds = {c.get("type"): c for c in (workload.get("status") or {}).get("conditions") or []}
    ev = conds.get(kueue.EVICTED) or {}
    return ev.get("status") == "True" and preemptor_uid in (ev.get("message") or "")
