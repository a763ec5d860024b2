"""The real Kubeflow training operator runs what `launch` submits, on kwok's fake GPU nodes."""

from __future__ import annotations

import time

import pytest

from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster


@pytest.fixture
def api(operator_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", operator_cluster)
    from launcher import client

    return client.connect()


def wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_sixteen_gpus_on_two_nodes_run_to_success(api, capsys):
    ns = namespace(api)
    code, out, err = launch(capsys, EXAMPLE, "--gpus", "16", "--gpus-per-node", "8", "--checkpoint", "s3://b/c",
                            "-n", ns, "--name", "e2e")
    assert code == 0, err

    def running_pods():
        pods = api.core.list_namespaced_pod(ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}=e2e").items
        return pods if len(pods) == 2 and all(p.status.phase == "Running" for p in pods) else None

    pods = wait(running_pods, 90, "two Running pods")
    assert {p.spec.node_name for p in pods} == {"gpu-ondemand-0", "gpu-ondemand-1"}  # 8 GPUs each, not spot/MIG
    for p in pods:
        env = {e.name: e.value for e in p.spec.containers[0].env}
        # v1.7 sets WORLD_SIZE to nodes x nprocPerNode (torchrun reads PET_NNODES for the nodes)
        assert env["WORLD_SIZE"] == "16" and env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "8"
        assert env["MASTER_ADDR"] and env["MASTER_PORT"] and env["PET_NODE_RANK"] in ("0", "1")
        assert env[contract.ENV_RUN_ID] == "e2e"
    assert api.core.list_namespaced_service(ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}=e2e").items

    code, out, _ = launch(capsys, "status", "e2e", "-n", ns)
    assert code == 0 and "Running" in out

    def succeeded():
        job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "e2e")
        return any(c["type"] == "Succeeded" and c["status"] == "True" for c in job.get("status", {}).get("conditions", []))

    wait(succeeded, 90, "the job to succeed")
    code, out, _ = launch(capsys, "status", "e2e", "-n", ns)
    assert code == 0 and f"{ns}/e2e: Succeeded" in out
