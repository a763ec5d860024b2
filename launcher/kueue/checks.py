"""What `launch --queue` decides from what it read of Kueue: one refusal line, a warning, or nothing.

Pure: the objects come in as the API serves them (dicts); launcher/k8s/kueue.py reads them.
Each function returns the line to print (None: nothing to say); the caller raises or warns.
"""

from __future__ import annotations

import itertools
import re
from typing import Mapping

from launcher.job.render import GPU_PRODUCT_LABEL  # the node label --gpu-type selects on
from launcher.kueue.names import VERSION

#: More flavor assignments than this are not tried: the verdict is then "may fit" (say nothing).
_MAX_ASSIGNMENTS = 4096


_SUFFIX = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: object) -> float:
    """A Kubernetes quantity ("8", "500m", "1k") as a number; here, not kubernetes.utils: only launcher/k8s imports it."""
    m = re.match(r"^([0-9.]+(?:[eE][-+]?[0-9]+)?)([a-zA-Z]*)$", str(value).strip())
    if not m or m.group(2) not in _SUFFIX:
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    return float(m.group(1)) * _SUFFIX[m.group(2)]


def missing_api(served: Mapping[str, list[str] | None]) -> str | None:
    """CRD name -> the versions it serves (None: no such CRD); the line when Kueue or its v1beta2 is missing."""
    for crd, versions in served.items():
        if versions is None:
            return f"the cluster has no Kueue (no {crd} CRD): install Kueue, or drop --queue"
        if VERSION not in versions:
            return (f"Kueue on this cluster serves {crd} as {', '.join(versions) or 'no version'}, not {VERSION}: "
                    f"upgrade Kueue (v0.17 or newer), or drop --queue")
    return None


def no_local_queue(queue: str, namespace: str, existing: list[str]) -> str:
    there = (f"LocalQueues there: {', '.join(sorted(existing))}" if existing
             else "it has none; ask your Kueue admin for one")
    return f"--queue {queue}: no LocalQueue {queue!r} in namespace {namespace} ({there})"


def no_priority_class(name: str, existing: list[str] | None) -> str:
    there = f" (there are: {', '.join(sorted(existing))})" if existing else ""
    return f"--priority {name}: no Kueue WorkloadPriorityClass {name!r}{there}; --priority-class names a PriorityClass"


def _flavor_caps(cq: dict, resource: str, gpu_type: str | None,
                 flavor_labels: Mapping[str, Mapping[str, str] | None]) -> tuple[dict[str, float | None], list[str]]:
    """(flavor -> most of `resource` the ClusterQueue may use there, None: unbounded), flavors of another GPU type."""
    spec = cq.get("spec") or {}
    cohort = bool(spec.get("cohortName"))
    caps: dict[str, float | None] = {}
    other: list[str] = []
    for group in spec.get("resourceGroups") or []:
        if resource not in (group.get("coveredResources") or []):
            continue
        for flavor in group.get("flavors") or []:
            name = flavor.get("name")
            product = (flavor_labels.get(name) or {}).get(GPU_PRODUCT_LABEL)
            if gpu_type and product is not None and product != gpu_type:
                other.append(f"{name} ({product})")
                continue
            quota = next((r for r in flavor.get("resources") or [] if r.get("name") == resource), None)
            if quota is None:
                continue
            limit = quota.get("borrowingLimit")
            # In a cohort without a borrowingLimit the queue may borrow whatever the cohort has unused.
            caps[name] = None if cohort and limit is None else (
                quantity(quota.get("nominalQuota", 0)) + (quantity(limit) if limit is not None else 0))
    return caps, other


def _fits(podsets: list[float], caps: dict[str, float]) -> bool:
    """Whether each pod set can take one flavor (Kueue assigns one per pod set) with every flavor's sum within its cap."""
    names = list(caps)
    if len(names) ** len(podsets) > _MAX_ASSIGNMENTS:
        return True
    for choice in itertools.product(names, repeat=len(podsets)):
        used: dict[str, float] = {}
        for n, need in zip(choice, podsets):
            used[n] = used.get(n, 0) + need
        if all(used[n] <= caps[n] for n in used):
            return True
    return False


def quota_problem(cq: dict, *, queue: str, resource: str, podsets: list[int], gpu_type: str | None,
                  flavor_labels: Mapping[str, Mapping[str, str] | None]) -> str | None:
    """The line when the ClusterQueue can never admit the job's GPUs (`podsets`: GPUs of each pod set).

    Kueue admits a workload whole or not at all, one flavor per pod set: a job larger than any
    assignment of its pod sets to flavors (nominalQuota + borrowingLimit each) waits forever.
    `flavor_labels`: ResourceFlavor name -> its spec.nodeLabels (None: not read); with --gpu-type
    a flavor whose nodes are another GPU model does not count.
    """
    need = sum(podsets)
    if need <= 0:
        return None
    name = (cq.get("metadata") or {}).get("name")
    where = f"ClusterQueue {name} (of LocalQueue {queue})"
    groups = (cq.get("spec") or {}).get("resourceGroups") or []
    if not any(resource in (g.get("coveredResources") or []) for g in groups):
        covered = sorted({r for g in groups for r in g.get("coveredResources") or []})
        return (f"{where} has no quota for {resource} (it covers {', '.join(covered) or 'nothing'}): Kueue would "
                "never admit the job; use another --queue, or --gpu-resource of one it covers")
    caps, other = _flavor_caps(cq, resource, gpu_type, flavor_labels)
    if not caps:
        return (f"--gpu-type {gpu_type}: no flavor of {where} has it (its flavors: {', '.join(other)}); "
                "use one of those GPU types, or another --queue")
    if any(c is None for c in caps.values()):
        return None  # may borrow without a fixed limit: cannot tell
    bounded = {k: float(v) for k, v in caps.items() if v is not None}
    if _fits([float(p) for p in podsets], bounded):
        return None
    detail = ", ".join(f"{k}: {v:g}" for k, v in sorted(bounded.items()))
    return (f"the job asks for {need} {resource} in all and {where} can never admit that "
            f"(at most per flavor, nominalQuota + borrowingLimit: {detail}; Kueue admits all pods or none); "
            "ask for fewer with --gpus, or use another --queue")


def unmanaged(kind: str, framework: str, others: Mapping[str, str]) -> str:
    """The line for a job kind Kueue left unsuspended: it would run outside the queue's quota."""
    alt = "".join(f" or use --backend {b} ({f})" for b, f in others.items())
    return (f"Kueue does not manage {kind} on this cluster: enable the `{framework}` integration "
            f"(integrations.frameworks in Kueue's Configuration){alt}; without it the job would run outside "
            "the queue's quota")

