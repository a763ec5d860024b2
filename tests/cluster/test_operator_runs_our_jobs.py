"""The real Kubeflow training operator runs what `launch` submits, on kwok's fake GPU nodes."""

from __future__ import annotations

import contextlib
import time

import pytest

from tests.cluster.conftest import KWOK_POD_FAIL
from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster


@pytest.fixture
def api(operator_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", operator_cluster)
    from launcher.k8s import api as client

    return client.connect()


def wait(predicate, timeout: float, what: str, explain=None):
    """predicate()'s first true value within timeout; else fail, with explain()'s text if given."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f"\n{explain()}" if explain else ""))


def test_sixteen_gpus_on_two_nodes_run_to_success(api, capsys):
    ns = namespace(api)
    code, out, err = launch(capsys, EXAMPLE, "--gpus", "16", "--gpus-per-node", "8", "--checkpoint", "s3://b/c",
                            "-n", ns, "--name", "e2e")
    assert code == 0, err

    def started_pods():
        # Each pod runs 10 s under kwok, and the worker starts a little after the master:
        # "started" is Running or already Succeeded.
        pods = api.core.list_namespaced_pod(ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}=e2e").items
        return pods if len(pods) == 2 and all(p.status.phase in ("Running", "Succeeded") for p in pods) else None

    try:
        pods = wait(started_pods, 90, "two started pods")
    except AssertionError:
        everywhere = [(p.metadata.namespace, p.metadata.name, p.status.phase, p.spec.node_name)
                      for p in api.core.list_pod_for_all_namespaces().items]
        raise AssertionError(f"two pods of e2e did not start; all pods: {everywhere}") from None
    assert {p.spec.node_name for p in pods} == {"gpu-ondemand-0", "gpu-ondemand-1"}  # 8 GPUs each, not spot/MIG
    for p in pods:
        env = {e.name: e.value for e in p.spec.containers[0].env}
        # v1.7 sets WORLD_SIZE to nodes x nprocPerNode (torchrun reads PET_NNODES for the nodes)
        assert env["WORLD_SIZE"] == "16" and env["PET_NNODES"] == "2" and env["PET_NPROC_PER_NODE"] == "8"
        assert env["MASTER_ADDR"] and env["MASTER_PORT"] and env["PET_NODE_RANK"] in ("0", "1")
        assert env[contract.ENV_RUN_ID] == "e2e"
    assert api.core.list_namespaced_service(ns, label_selector=f"{contract.OPERATOR_JOB_NAME_LABEL}=e2e").items

    code, out, _ = launch(capsys, "status", "e2e", "-n", ns)
    assert code == 0 and (f"{ns}/e2e: Running" in out or f"{ns}/e2e: Succeeded" in out), out

    def succeeded():
        job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "e2e")
        return any(c["type"] == "Succeeded" and c["status"] == "True" for c in job.get("status", {}).get("conditions", []))

    wait(succeeded, 90, "the job to succeed")
    code, out, _ = launch(capsys, "status", "e2e", "-n", ns)
    assert code == 0 and f"{ns}/e2e: Succeeded" in out


def exit_pod(api, ns: str, pod, code: int) -> None:
    """Have kwok report the container exiting with `code`, as a kubelet would (its pod chaos stage)."""
    api.core.patch_namespaced_pod(pod.metadata.name, ns, {"metadata": {
        "labels": {KWOK_POD_FAIL: "true"}, "annotations": {f"{KWOK_POD_FAIL}/exit-code": str(code)}}})


def complete_pod(api, ns: str, pod) -> None:
    """Report the container finishing (exit 0), as a kubelet would."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    api.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": {
        "phase": "Succeeded",
        "containerStatuses": [{"name": contract.CONTAINER_NAME, "image": pod.spec.containers[0].image,
                               "imageID": "", "ready": False, "restartCount": 0,
                               "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                                        "startedAt": now, "finishedAt": now}}}]}})


@contextlib.contextmanager
def held(api, capsys, *flags: str, ns: str | None = None):
    """A one-pod job named "held", which kwok leaves Running (k8s/kwok/stages.yaml): the test ends it.

    Yields (namespace, pod selector). Cancelled afterwards, so that its pod does not hold a GPU node
    for later tests.
    """
    ns = ns or namespace(api)
    code, _, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "held",
                          "--max-restarts", "3", *flags)
    assert code == 0, err
    try:
        yield ns, f"{contract.OPERATOR_JOB_NAME_LABEL}=held"
    finally:
        launch(capsys, "cancel", "held", "-n", ns)


@pytest.fixture
def held_job(api, capsys):
    with held(api, capsys) as job:
        yield job


def running_pod(api, ns: str, selector: str, exclude: str | None = None):
    pods = [p for p in api.core.list_namespaced_pod(ns, label_selector=selector).items
            if p.status.phase == "Running" and p.metadata.uid != exclude and not p.metadata.deletion_timestamp]
    return pods[0] if pods else None


def job_conditions(api, ns: str) -> dict:
    job = api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", "held")
    return {c["type"]: c["status"] for c in job.get("status", {}).get("conditions", [])}


def test_exit_143_is_restarted_and_status_counts_the_retry(api, capsys, held_job):
    import json

    ns, selector = held_job
    first = wait(lambda: running_pod(api, ns, selector), 90, "the master pod")
    exit_pod(api, ns, first, 143)  # preempted, checkpoint committed: retryable
    second = wait(lambda: running_pod(api, ns, selector, exclude=first.metadata.uid), 90,
                  "the operator to recreate the pod")
    assert second.metadata.name == first.metadata.name
    code, out, _ = launch(capsys, "status", "held", "-n", ns, "-o", "json")
    status = json.loads(out)
    assert code == 0 and status["restarts"] == 1 and status["retries_left"] == 2, status["events"]
    exits = {(c["replica"], c["exit_code"], c["retried"]) for c in status["causes"] if "exit_code" in c}
    assert exits == {("master-0", 143, True)}, status["causes"]
    code, out, _ = launch(capsys, "status", "held", "-n", ns)
    assert f"cause master-0   exit 143: {contract.describe_exit_code(143)} (retried)" in out, out


def test_exit_1_fails_the_job_for_good(api, capsys, held_job):
    ns, selector = held_job
    pod = wait(lambda: running_pod(api, ns, selector), 90, "the master pod")
    exit_pod(api, ns, pod, 1)  # the script raised: permanent
    wait(lambda: job_conditions(api, ns).get("Failed") == "True", 20, "the job to fail")
    code, out, _ = launch(capsys, "status", "held", "-n", ns)
    assert code == 0 and f"{ns}/held: Failed" in out and "last exit 1: user error" in out
    assert "cause master-0   exit 1: user error (not retried)" in out, out


def test_the_operator_webhook_refuses_a_job_the_crd_schema_admits(api, capsys):
    # The control for the webhook wiring in conftest: with failurePolicy Fail, every job above went
    # through it; this one passes the CRD's schema but not the operator's own rules.
    import json

    from kubernetes.client.exceptions import ApiException

    ns = namespace(api)
    code, out, err = launch(capsys, EXAMPLE, "--gpus", "8", "--checkpoint", "s3://b/c", "-n", ns, "--name", "renamed",
                            "--dry-run", "-o", "json")
    assert code == 0, err
    job = next(o for o in json.loads(out) if o["kind"] == "PyTorchJob")
    job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["name"] = "not-pytorch"
    with pytest.raises(ApiException) as refused:
        api.custom.create_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", job)
    assert "validator.pytorchjob.training-operator.kubeflow.org" in refused.value.body
    assert "must have at least one container with name pytorch" in refused.value.body


@pytest.mark.xfail(strict=True, reason="training-operator v1.8.1 does not enforce runPolicy.backoffLimit "
                   "(`--max-restarts`) under restartPolicy ExitCode: it deletes and recreates the pod, and its "
                   "PastBackoffLimit counts only the container restartCount of Running pods, which stays 0")
def test_a_spent_retry_budget_fails_the_job(api, capsys, held_job):
    ns, selector = held_job  # --max-restarts 3
    previous = None
    for attempt in range(4):
        pod = wait(lambda: running_pod(api, ns, selector, exclude=previous), 90, f"run {attempt + 1}")
        exit_pod(api, ns, pod, 143)
        previous = pod.metadata.uid
    wait(lambda: job_conditions(api, ns).get("Failed") == "True", 30, "the job to fail after 3 retries")
