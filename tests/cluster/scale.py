"""Extra kwok GPU nodes for scale tests and the status bench (bench/status_scale.py).

They carry a GPU product no other test asks for, and go again afterwards, so jobs of other
tests never land on them.
"""

from __future__ import annotations

import contextlib
import time

SCALE_GPU_PRODUCT = "KUBETRAIN-SCALE-TEST"


def scale_node(i: int, gpus: int) -> dict:
    name = f"gpu-scale-{i}"
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "annotations": {"kwok.x-k8s.io/node": "fake"},
                         "labels": {"type": "kwok", "nvidia.com/gpu.product": SCALE_GPU_PRODUCT,
                                    "kubernetes.io/hostname": name}},
            "spec": {"taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}]}}


@contextlib.contextmanager
def scale_nodes(core, count: int, gpus: int = 8, timeout: float = 120):
    """`count` kwok nodes of `gpus` GPUs each, Ready; deleted afterwards."""
    capacity = {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": str(gpus)}
    names = []
    try:
        for i in range(count):
            node = core.create_node(scale_node(i, gpus))
            names.append(node.metadata.name)
            core.patch_node_status(node.metadata.name, {"status": {"allocatable": capacity, "capacity": capacity}})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nodes = core.list_node(label_selector=f"nvidia.com/gpu.product={SCALE_GPU_PRODUCT}").items
            if len(nodes) == count and all(any(c.type == "Ready" and c.status == "True"
                                               for c in n.status.conditions or []) for n in nodes):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"{count} scale nodes not Ready after {timeout}s")
        yield names
    finally:
        for name in names:
            try:
                core.delete_node(name)
            except Exception:
                pass


def wait_running(core, ns: str, job: str, count: int, timeout: float = 300) -> list:
    deadline = time.monotonic() + timeout
    pods = []
    while time.monotonic() < deadline:
        pods = core.list_namespaced_pod(ns, label_selector=f"training.kubeflow.org/job-name={job}").items
        if len(pods) == count and all(p.status.phase == "Running" for p in pods):
            return pods
        time.sleep(1)
    phases = {}
    for p in pods:
        phases[p.status.phase] = phases.get(p.status.phase, 0) + 1
    raise AssertionError(f"{job}: {count} Running pods not seen after {timeout}s: {len(pods)} pods {phases}")
