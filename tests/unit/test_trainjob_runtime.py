"""k8s/trainjob/'s ClusterTrainingRuntime: its CRDs' schemas, offline, and each number's one source.

The cluster tier (tests/cluster/test_trainjob_runtime.py) runs it under the real
controllers; here, what can be known without them.
"""

from __future__ import annotations

import dataclasses

import kubernetes_validate
import pytest

from launcher.job.spec import JobSpec, Resources
from tests import crds
from tests.cluster import trainer_v2
from trainer import contract

K8S_VERSION = "1.31.0"
RUNTIME = trainer_v2.load_runtime()
SPEC = RUNTIME["spec"]["template"]["spec"]
(NODE_JOB,) = SPEC["replicatedJobs"]
JOB = NODE_JOB["template"]["spec"]
POD = JOB["template"]["spec"]
(CONTAINER,) = POD["containers"]
ENV = {e["name"]: e["value"] for e in CONTAINER["env"]}
LAUNCH_DEFAULTS = {f.name: f.default for f in dataclasses.fields(JobSpec)}


def test_the_runtime_validates_against_its_crd_and_its_template_against_jobset_and_pod_schemas():
    crds.validate(RUNTIME)
    crds.validate({"apiVersion": trainer_v2.JOBSET_API, "kind": "JobSet", "metadata": {"name": "j"}, "spec": SPEC})
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": POD}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"}, "spec": JOB}
    kubernetes_validate.validate(job, K8S_VERSION, strict=True)


def test_the_strict_check_refuses_a_field_the_crd_does_not_name():
    import jsonschema

    bad = {**RUNTIME, "spec": {**RUNTIME["spec"], "mlPolicy": {"numNodes": 1, "torch": {}, "numNodez": 2}}}
    with pytest.raises(jsonschema.ValidationError, match="numNodez"):
        crds.validate(bad)


def test_the_trainer_plugins_find_the_node_job_and_container():
    """The Torch plugin and the JobSet builder fill only the container `node` of the trainer-ancestor Job."""
    assert NODE_JOB["name"] == trainer_v2.TRAINER_JOB
    assert NODE_JOB["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert CONTAINER["name"] == trainer_v2.TRAINER_CONTAINER
    assert CONTAINER["command"] == ["python", "-m", "trainer", "run"]
    assert "torch" in RUNTIME["spec"]["mlPolicy"]


def test_exit_codes_map_to_the_contract():
    """143 and disruptions count nothing; 1-127 fail the Job at once; every other failure is counted."""
    rules = JOB["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    by_action = {r["action"]: r["onExitCodes"] for r in rules[1:]}
    assert set(by_action) == {"Ignore", "FailJob"}
    for codes in by_action.values():
        assert (codes["containerName"], codes["operator"]) == (trainer_v2.TRAINER_CONTAINER, "In")
    assert by_action["Ignore"]["values"] == [contract.ExitCode.PREEMPTED]
    assert by_action["FailJob"]["values"] == [c for c in range(1, 256) if not contract.is_retryable(c)]
    for code in (contract.ExitCode.HANG, contract.ExitCode.INFRA, contract.ExitCode.for_signal(9)):
        assert all(code not in codes["values"] for codes in by_action.values())  # counted
    assert JOB["backoffLimit"] == 0 and POD["restartPolicy"] == "Never"


def test_the_jobset_turns_a_permanent_failure_into_failure_and_restarts_on_a_counted_one():
    policy = SPEC["failurePolicy"]
    assert [(r["action"], r["onJobFailureReasons"]) for r in policy["rules"]] == [
        ("FailJobSet", ["PodFailurePolicy"]),  # the Job's reason when a FailJob rule matched
        ("RestartJobSet", ["BackoffLimitExceeded"]),  # the Job's reason once backoffLimit 0 is spent
    ]


def test_the_runtimes_defaults_are_launchs():
    assert SPEC["failurePolicy"]["maxRestarts"] == LAUNCH_DEFAULTS["max_restarts"]
    assert ENV[contract.ENV_MAX_RESTARTS] == str(LAUNCH_DEFAULTS["max_restarts"])
    assert POD["terminationGracePeriodSeconds"] == contract.termination_grace_period_seconds(
        contract.DEFAULT_GRACE_SECONDS)
    assert float(ENV[contract.ENV_GRACE_SECONDS]) == contract.DEFAULT_GRACE_SECONDS
    shm = {v["name"]: v for v in POD["volumes"]}["dshm"]["emptyDir"]
    assert shm == {"medium": "Memory", "sizeLimit": Resources().shm}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in CONTAINER["volumeMounts"]


def test_the_pods_meet_the_restricted_pod_security_standard():
    assert POD["securityContext"]["runAsNonRoot"] is True and POD["securityContext"]["runAsUser"] != 0
    assert POD["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
    sc = CONTAINER["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"]
    assert POD["automountServiceAccountToken"] is False


def test_a_trainjob_of_the_test_builder_validates_against_the_trainjob_crd():
    job = trainer_v2.trainjob("job-a", "team-a", args=["train.py", "--steps", "5"], num_nodes=2,
                              env={contract.ENV_RUN_ID: "job-a"},
                              resources_per_node={"limits": {"nvidia.com/gpu": "8"}},
                              pod_labels={"kubetrain.dev/job": "job-a"}, pod_annotations={"a": "b"},
                              pod_spec={"terminationGracePeriodSeconds": 90,
                                        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists"}],
                                        "containers": [{"name": "node", "volumeMounts": [
                                            {"name": "data", "mountPath": "/data"}]}],
                                        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "d"}}]})
    crds.validate(job)
