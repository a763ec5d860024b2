"""Kubeflow Trainer v2 runs hand-written TrainJobs on our runtime, and the cluster enforces the exit-code contract.

The Trainer controller manager and the JobSet controller (tests/cluster/trainer_v2.py) on
the operator cluster; kwok runs the pods: a Job's pod exits 0 at once, and one labelled
KWOK_POD_FAIL exits with the code in its annotation (k8s/kwok/stages.yaml). What
k8s/trainjob/clustertrainingruntime.yaml promises, each shown here: exit 143 is replaced
without spending the budget, exit 1 fails the TrainJob at once, a retryable exit (201)
restarts every node until failurePolicy.maxRestarts restarts are spent, then fails.
"""

from __future__ import annotations

import copy
import json

import pytest

from tests.cluster import trainer_v2
from tests.cluster.conftest import KWOK_POD_FAIL
from tests.cluster.test_operator_runs_our_jobs import wait
from trainer import contract

pytestmark = pytest.mark.cluster

NS = "kubetrain-v2"
GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"


class V2:
    def __init__(self, kubeconfig: str):
        from kubernetes import client, config

        api_client = config.new_client_from_config(config_file=kubeconfig)
        self.core = client.CoreV1Api(api_client)
        self.batch = client.BatchV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    def create(self, body: dict, plural: str = "trainjobs") -> dict:
        return self.custom.create_namespaced_custom_object(GROUP, VERSION, NS, plural, body)

    def trainjob(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object(GROUP, VERSION, NS, "trainjobs", name)

    def jobset(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("jobset.x-k8s.io", "v1alpha2", NS, "jobsets", name)

    def pods(self, name: str) -> list:
        return self.core.list_namespaced_pod(NS, label_selector=f"{trainer_v2.JOBSET_NAME_LABEL}={name}").items

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainjobs", name,
                                                    propagation_policy="Foreground")

    def explain(self, name: str):
        def text() -> str:
            from kubernetes.client.exceptions import ApiException

            out = []
            for what, get in (("TrainJob", self.trainjob), ("JobSet", self.jobset)):
                try:
                    out.append(f"{what}: {json.dumps(get(name).get('status'))}")
                except ApiException as e:
                    out.append(f"{what}: {e.status}")
            out += [f"pod {p.metadata.name} {p.status.phase} {exit_code(p)}" for p in self.pods(name)]
            return "\n".join(out)
        return text


def condition(obj: dict, kind: str) -> dict | None:
    return next((c for c in (obj.get("status") or {}).get("conditions") or []
                 if c["type"] == kind and c["status"] == "True"), None)


def exit_code(pod) -> int | None:
    for cs in pod.status.container_statuses or []:
        if cs.state and cs.state.terminated:
            return cs.state.terminated.exit_code
    return None


def failing(code: int) -> dict:
    """Pod labels and annotations that have kwok fail the trainer container with `code`."""
    return {"pod_labels": {KWOK_POD_FAIL: "true"}, "pod_annotations": {f"{KWOK_POD_FAIL}/exit-code": str(code)}}


@pytest.fixture
def v2(trainjob_cluster):
    from kubernetes.client.exceptions import ApiException

    api = V2(trainjob_cluster)
    try:
        api.core.create_namespace({"metadata": {"name": NS}})
    except ApiException as e:
        if e.status != 409:
            raise
    return api


def test_a_trainjob_on_our_runtime_runs_to_complete_with_what_a_pytorchjob_pod_gets(v2):
    """Two 8-GPU nodes of one GPU type, with a grace period of 90 s: what launch sets per job, set per TrainJob."""
    name = "done"
    gpu_type = "NVIDIA-H100-80GB-HBM3"  # k8s/kwok/nodes.yaml: the on-demand pool
    job = trainer_v2.trainjob(
        name, NS, args=["train.py", "--steps", "5"], num_nodes=2, num_proc_per_node=8,
        env={contract.ENV_RUN_ID: name, contract.ENV_GRACE_SECONDS: "90"},
        resources_per_node={"requests": {"nvidia.com/gpu": "8"}, "limits": {"nvidia.com/gpu": "8"}},
        pod_labels={contract.LABEL_JOB: name},
        pod_spec={"terminationGracePeriodSeconds": contract.termination_grace_period_seconds(90),
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                      "nodeSelectorTerms": [{"matchExpressions": [
                          {"key": "nvidia.com/gpu.product", "operator": "In", "values": [gpu_type]}]}]}}}})
    v2.create(job)
    wait(lambda: condition(v2.trainjob(name), "Complete"), 120, "the TrainJob to complete", v2.explain(name))
    pods = v2.pods(name)
    assert len(pods) == 2 and all(p.status.phase == "Succeeded" for p in pods)
    runtime = trainer_v2.load_runtime()
    (want,) = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"][
        "containers"]
    for pod in pods:
        (c,) = pod.spec.containers
        assert (c.name, c.image, c.command, c.args) == (trainer_v2.TRAINER_CONTAINER, want["image"], want["command"],
                                                       ["train.py", "--steps", "5"])
        env = {e.name: e.value for e in c.env}
        assert env[contract.ENV_RUN_ID] == name and env[contract.ENV_MAX_RESTARTS] == "3"
        assert env[contract.ENV_GRACE_SECONDS] == "90"  # the TrainJob's value replaces the runtime's
        # The Torch plugin's: static torchrun settings, the node rank from the Job's completion index.
        assert (env["PET_NNODES"], env["PET_NPROC_PER_NODE"], env["PET_MASTER_ADDR"]) == (
            "2", "8", f"{name}-node-0-0.{name}")
        assert c.resources.limits["nvidia.com/gpu"] == c.resources.requests["nvidia.com/gpu"] == "8"
        assert v2.core.read_node(pod.spec.node_name).metadata.labels["nvidia.com/gpu.product"] == gpu_type
        assert {e.name: e.value_from for e in c.env}["PET_NODE_RANK"].field_ref.field_path == \
            "metadata.annotations['batch.kubernetes.io/job-completion-index']"
        assert pod.metadata.labels[contract.LABEL_JOB] == name
        assert pod.metadata.labels[contract.LABEL_MANAGED_BY] == contract.MANAGED_BY
        assert (pod.spec.restart_policy, pod.spec.termination_grace_period_seconds) == ("Never", 90)
        assert {m.mount_path for m in c.volume_mounts} >= {"/dev/shm"}
        assert pod.spec.security_context.run_as_non_root and c.security_context.capabilities.drop == ["ALL"]
    jobset = v2.jobset(name)["spec"]
    assert jobset["failurePolicy"] == {**runtime["spec"]["template"]["spec"]["failurePolicy"]}
    assert jobset["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"] == \
        runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["podFailurePolicy"]


def test_exit_143_is_replaced_without_spending_the_budget(v2):
    name = "preempted"
    v2.create(trainer_v2.trainjob(name, NS, args=["train.py"], **failing(contract.ExitCode.PREEMPTED)))
    try:
        # Three preemptions in a row: more than a budget of 0 restarts would allow, were they counted.
        wait(lambda: sum(exit_code(p) == 143 for p in v2.pods(name)) >= 3, 120, "three pods preempted (exit 143)",
             v2.explain(name))
        jobset = v2.jobset(name)
        assert jobset["status"].get("restarts", 0) == 0 and not condition(jobset, "Failed")
        assert not condition(v2.trainjob(name), "Failed")
        (job,) = v2.batch.list_namespaced_job(NS, label_selector=f"{trainer_v2.JOBSET_NAME_LABEL}={name}").items
        assert not job.status.failed and not any(c.type == "Failed" for c in job.status.conditions or [])
    finally:
        v2.delete(name)


def test_exit_1_fails_the_trainjob_at_once(v2):
    name = "user-error"
    v2.create(trainer_v2.trainjob(name, NS, args=["train.py"], **failing(contract.ExitCode.USER_ERROR)))
    failed = wait(lambda: condition(v2.trainjob(name), "Failed"), 120, "the TrainJob to fail", v2.explain(name))
    jobset = v2.jobset(name)
    assert jobset["status"].get("restarts", 0) == 0
    assert [exit_code(p) for p in v2.pods(name)] == [1]  # one attempt, one pod
    assert failed["reason"] == "FailJobSetFailurePolicyAction", failed  # the runtime's PermanentExitCode rule
    (job,) = v2.batch.list_namespaced_job(NS, label_selector=f"{trainer_v2.JOBSET_NAME_LABEL}={name}").items
    assert {c.type: c.reason for c in job.status.conditions if c.status == "True"}["Failed"] == "PodFailurePolicy"


def test_a_retryable_exit_restarts_every_node_until_max_restarts_then_fails(v2):
    """The budget is the runtime's failurePolicy.maxRestarts: 2 in a namespaced TrainingRuntime of its own.

    A per-job --max-restarts needs such a runtime: a TrainJob cannot patch the JobSet's failurePolicy.
    """
    name, runtime_name = "infra", "kubetrain-2-restarts"
    runtime = copy.deepcopy(trainer_v2.load_runtime())
    runtime["kind"] = "TrainingRuntime"
    runtime["metadata"] = {"name": runtime_name, "namespace": NS, "labels": runtime["metadata"]["labels"]}
    runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] = 2
    v2.create(runtime, "trainingruntimes")
    v2.create(trainer_v2.trainjob(name, NS, args=["train.py"], num_nodes=2, runtime=runtime_name,
                                  runtime_kind="TrainingRuntime", **failing(contract.ExitCode.INFRA)))
    failed = wait(lambda: condition(v2.trainjob(name), "Failed"), 240, "the TrainJob to fail", v2.explain(name))
    status = v2.jobset(name)["status"]
    assert (status["restarts"], status.get("restartsCountTowardsMax")) == (2, 2), status
    assert failed["reason"] == "ReachedMaxRestarts", failed


def test_the_trainer_webhook_refuses_torchruns_reserved_env(v2):
    """PET_* belong to the Torch plugin: a TrainJob that sets one is refused (launch must never set them)."""
    from kubernetes.client.exceptions import ApiException

    job = trainer_v2.trainjob("reserved", NS, args=["train.py"], env={"PET_NNODES": "3"})
    with pytest.raises(ApiException) as e:
        v2.create(job)
    assert e.value.status == 403 and "denied the request" in e.value.body, e.value.body
    assert "must not have reserved envs" in e.value.body and "PET_NNODES" in e.value.body, e.value.body
