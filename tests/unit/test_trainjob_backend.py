"""`launch --backend trainjob|auto`: what it renders, that it validates offline, and how the backend is chosen."""

from __future__ import annotations

import os
import types

import kubernetes_validate
import pytest
import yaml

from launcher import backends
from launcher.backends import trainjob
from launcher.cli import main
from launcher.k8s import discovery
from tests import crds
from tests.cluster import trainer_v2
from tests.golden import regen
from trainer import contract

GOLDEN = os.path.join(regen.HERE, "launch-trainjob")
K8S_VERSION = "1.31.0"


def golden(case: str) -> list[dict]:
    return list(yaml.safe_load_all(open(os.path.join(GOLDEN, f"{case}.yaml"))))


@pytest.mark.parametrize("case", sorted(f[:-5] for f in os.listdir(GOLDEN)))
def test_every_trainjob_dry_run_object_validates_offline(case):
    for obj in golden(case):
        if obj["kind"] in backends.CUSTOM_KINDS:
            crds.validate(obj)  # the vendored Trainer v2 CRDs, strict
        else:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def by_kind(case: str) -> dict[str, dict]:
    return {o["kind"]: o for o in golden(case)}


def test_a_plain_job_uses_the_cluster_runtime_and_patches_the_pod_it_cannot_set_otherwise():
    job = by_kind("two-nodes")["TrainJob"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": "kubetrain"}
    t = job["spec"]["trainer"]
    # numProcPerNode always: without it the runtime's torch policy gives PET_NPROC_PER_NODE=auto.
    assert (t["numNodes"], t["numProcPerNode"], t["args"]) == (2, 8, ["train.py", "--steps", "5"])
    assert not any(e["name"].startswith("PET_") for e in t["env"])  # the Trainer's webhook refuses them
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == trainer_v2.PATCH_MANAGER
    (rj,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert rj["name"] == trainer_v2.TRAINER_JOB
    pod = rj["template"]["spec"]["template"]
    assert [c["name"] for c in pod["spec"]["containers"]] == [trainer_v2.TRAINER_CONTAINER]
    assert pod["metadata"]["labels"][contract.LABEL_JOB] == "job-a"
    assert "priorityClassName" not in pod["spec"] and "schedulerName" not in pod["spec"]


def test_the_budget_is_one_number_for_the_runtime_env_and_status():
    assert backends.BACKENDS["trainjob"].retry_limit(by_kind("two-nodes")["TrainJob"]) == 3
    kinds = by_kind("policies")  # --max-restarts 10: only a runtime of the job's own can say so
    job, runtime = kinds["TrainJob"], kinds["TrainingRuntime"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "TrainingRuntime",
                                         "name": "job-a"}
    assert runtime["metadata"]["name"] == "job-a" and runtime["metadata"]["labels"][contract.LABEL_JOB] == "job-a"
    assert runtime["spec"]["template"]["spec"]["failurePolicy"]["maxRestarts"] == 10 == trainjob.retry_limit(job)
    assert job["spec"]["activeDeadlineSeconds"] == 86400


def test_a_jobs_own_runtime_has_the_cluster_runtimes_policy():
    """The shipped ClusterTrainingRuntime and the runtime launch renders agree on every rule but the budget."""
    shipped = trainer_v2.load_runtime()["spec"]
    own = by_kind("policies")["TrainingRuntime"]["spec"]
    assert own["template"]["spec"]["failurePolicy"] == {**shipped["template"]["spec"]["failurePolicy"],
                                                        "maxRestarts": 10}
    (want,), (got,) = shipped["template"]["spec"]["replicatedJobs"], own["template"]["spec"]["replicatedJobs"]
    for key in ("backoffLimit", "podFailurePolicy"):
        assert got["template"]["spec"][key] == want["template"]["spec"][key]
    assert got["template"]["metadata"] == want["template"]["metadata"]
    assert shipped["template"]["spec"]["failurePolicy"]["maxRestarts"] == trainjob.CLUSTER_RUNTIME_MAX_RESTARTS
    pod = got["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["containers"][0]["name"] == trainjob.CONTAINER
    assert pod["containers"][0]["command"] == ["python", "-m", "trainer", "run"]


@pytest.mark.parametrize("case,field", [("gang-volcano", "priorityClassName"), ("gang-volcano", "schedulerName"),
                                        ("pvc-secret-shm", "envFrom")])
def test_what_no_trainjob_can_patch_goes_in_the_jobs_own_runtime(case, field):
    kinds = by_kind(case)
    pod = kinds["TrainingRuntime"]["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]
    where = pod["spec"]["containers"][0] if field == "envFrom" else pod["spec"]
    assert field in where
    assert kinds["TrainJob"]["spec"]["runtimeRef"]["kind"] == "TrainingRuntime"


def test_gang_scheduling_is_the_runtimes_pod_group_policy():
    assert by_kind("gang-volcano")["TrainingRuntime"]["spec"]["podGroupPolicy"] == {"volcano": {}}
    assert by_kind("gang-scheduler-plugins")["TrainingRuntime"]["spec"]["podGroupPolicy"] == {"coscheduling": {}}


def test_status_reads_the_pods_the_jobset_controller_labels():
    labels = {trainjob.POD_JOB_LABEL: "j", trainjob.REPLICATED_JOB_LABEL: "node",
              trainjob.COMPLETION_INDEX_LABEL: "3"}
    from launcher.k8s.jobs import pod_backend, replica_id

    assert pod_backend(labels) is trainjob and replica_id({"metadata": {"labels": labels}}) == "node-3"
    assert trainjob.state({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}) == "Succeeded"
    assert trainjob.state({"status": {"conditions": [{"type": "Failed", "status": "True"}]}}) == "Failed"
    assert trainjob.state({"status": {"jobsStatus": [{"name": "node", "active": 2}]}}) == "Running"
    assert trainjob.restarts({"status": {"restarts": 2, "restartsCountTowardsMax": 1}}) == (2, 1)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("argv", [["--backend", "tfjob"], ["--backend", ""]])
def test_a_bad_backend_is_one_line_and_exit_2(capsys, argv):
    code, out, err = run(capsys, "train.py", "--checkpoint", "s3://b/c", *argv, "--dry-run")
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "--backend" in err and "pytorchjob, trainjob or auto" in err


def test_a_bad_backend_in_the_config_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch):
    (tmp_path / "launch.yaml").write_text("backend: mpijob\n")
    monkeypatch.chdir(tmp_path)
    code, _, err = run(capsys, "train.py", "--checkpoint", "s3://b/c", "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1 and "config backend 'mpijob'" in err


def test_an_elastic_trainjob_is_refused_naming_the_flag(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    code, _, err = run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "trainjob", "--nodes", "1:2",
                       "--dry-run")
    assert code == 2 and len(err.splitlines()) == 1 and "--nodes MIN:MAX" in err


def kinds_of(out: str) -> list[str]:
    return [d["kind"] for d in yaml.safe_load_all(out)]


def test_the_config_picks_the_backend_and_auto_renders_offline_with_dry_run(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    (tmp_path / "launch.yaml").write_text("backend: trainjob\n")
    assert kinds_of(run(capsys, "train.py", "--checkpoint", "s3://b/c", "--dry-run")[1])[0] == "TrainJob"
    # --dry-run asks no cluster: auto renders the config's backend, else PyTorchJob.
    assert kinds_of(run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "auto", "--dry-run")[1])[0] \
        == "TrainJob"
    (tmp_path / "launch.yaml").write_text("backend: auto\n")
    assert kinds_of(run(capsys, "train.py", "--checkpoint", "s3://b/c", "--dry-run")[1])[0] == "PyTorchJob"
    assert kinds_of(run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "pytorchjob",
                        "--dry-run")[1])[0] == "PyTorchJob"


GROUPS_BOTH = {"items": [
    {"metadata": {"name": "kubeflow.org"}, "versions": [{"version": "v1", "resources": [{"resource": "pytorchjobs"}]}]},
    {"metadata": {"name": "trainer.kubeflow.org"}, "versions": [
        {"version": "v1alpha1", "resources": [{"resource": "trainjobs"}, {"resource": "trainingruntimes"}]}]}]}


def test_auto_picks_what_the_cluster_serves_and_pytorchjob_when_both_unless_the_config_says_otherwise():
    both = discovery.served(GROUPS_BOTH)
    assert backends.pick(both, None) is backends.BACKENDS["pytorchjob"]
    assert backends.pick(both, "trainjob") is trainjob
    only_v2 = discovery.served({"items": GROUPS_BOTH["items"][1:]})
    assert backends.pick(only_v2, None) is trainjob and backends.pick(only_v2, "pytorchjob") is trainjob
    # kubeflow.org without pytorchjobs (Kubeflow's notebooks): not the training operator.
    notebooks = {"items": [{"metadata": {"name": "kubeflow.org"},
                            "versions": [{"version": "v1", "resources": [{"resource": "notebooks"}]}]}]}
    with pytest.raises(Exception, match="serves neither PyTorchJob nor TrainJob"):
        backends.pick(discovery.served(notebooks), None)
    # An API server without aggregated discovery answers an APIGroupList: groups and versions only.
    legacy = {"groups": [{"name": "trainer.kubeflow.org", "versions": [{"version": "v1alpha1"}]}]}
    assert backends.pick(discovery.served(legacy), None) is trainjob


def test_a_trainjob_schedule_stores_its_backend_and_its_runs_are_trainjobs_with_the_warm_start(capsys, tmp_path,
                                                                                               monkeypatch):
    import base64
    import json

    from launcher.schedule.render import run_to_objects
    from launcher.schedule.spec import stored_from_dict

    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    code, out, err = run(capsys, "schedule", "train.py", "--cron", "@daily", "--checkpoint", "s3://b/c",
                         "--warm-start-from", "latest", "--backend", "trainjob", "--dry-run")
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    roles = {o["metadata"]["name"]: o["rules"] for o in objects if o["kind"] == "Role"}
    # A Role of its own for the TrainJob rules: a PyTorchJob schedule in the namespace never replaces them.
    assert roles["kubetrain-submitter-trainjob"] == list(trainjob.SUBMITTER_RULES)
    assert roles["kubetrain-submitter"][0] == backends.DEFAULT.SUBMITTER_RULES[0]
    cm = next(o for o in objects if o["kind"] == "ConfigMap")
    doc = json.loads(cm["data"]["schedule.json"])
    assert doc["schedule"]["backend"] == "trainjob"
    stored = stored_from_dict(doc, code_data=base64.b64decode(cm["binaryData"][contract.CODE_BUNDLE_NAME]))
    (job, *_) = run_to_objects(stored, run_name="train-29403360", namespace="ns")
    assert job["kind"] == "TrainJob" and job["metadata"]["labels"][contract.LABEL_SCHEDULE] == "train"
    env = {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}
    assert env[contract.ENV_WARM_START_FROM] == contract.WARM_START_LATEST and env[contract.ENV_RUN_ID] == "train-29403360"


def test_ttl_and_clean_pod_policy_given_for_a_trainjob_warn_that_they_do_nothing(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "train.py").write_text("")
    code, out, err = run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "trainjob", "--ttl", "60",
                         "--dry-run")
    assert code == 0 and kinds_of(out)[0] == "TrainJob"
    assert err.splitlines() == [f"launch: warning: --ttl {trainjob.IGNORED_FLAGS['ttl']}"]
    (tmp_path / "launch.yaml").write_text("clean_pod_policy: All\n")  # from the config as well
    err = run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "trainjob", "--dry-run")[2]
    assert err.splitlines() == [f"launch: warning: --clean-pod-policy {trainjob.IGNORED_FLAGS['clean_pod_policy']}"]
    # Not given, or on a PyTorchJob (which honours both): no warning.
    (tmp_path / "launch.yaml").unlink()
    assert run(capsys, "train.py", "--checkpoint", "s3://b/c", "--backend", "trainjob", "--dry-run")[2] == ""
    assert run(capsys, "train.py", "--checkpoint", "s3://b/c", "--ttl", "60", "--dry-run")[2] == ""


def test_chaos_kill_pod_master_is_the_rank_0_pod_of_either_kind():
    import random
    from types import SimpleNamespace

    from launcher.chaos.cluster import pick_pod

    def pod(labels: dict) -> SimpleNamespace:
        return SimpleNamespace(metadata=SimpleNamespace(labels=labels))

    nodes = [pod({trainjob.POD_JOB_LABEL: "j", trainjob.REPLICATED_JOB_LABEL: "node",
                  trainjob.COMPLETION_INDEX_LABEL: str(i)}) for i in (1, 0)]
    assert pick_pod(nodes, "master", random.Random(0)) is nodes[1]
    assert pick_pod(nodes, "node-1", random.Random(0)) is nodes[0]
    assert pick_pod(nodes, "worker-1", random.Random(0)) is None
    replicas = [pod({contract.OPERATOR_JOB_NAME_LABEL: "j", contract.OPERATOR_REPLICA_TYPE_LABEL: t,
                     contract.OPERATOR_REPLICA_INDEX_LABEL: "0"}) for t in ("worker", "master")]
    assert pick_pod(replicas, "master", random.Random(0)) is replicas[1]


def test_a_queued_trainjob_with_its_own_grace_period_gets_a_runtime_of_its_own():
    """Kueue v0.17's update drops a runtimePatches grace period (Trainer v2.2.0 types): a runtime keeps it."""
    import yaml

    from launcher.backends import trainjob as tj
    from tests.helpers import REPO

    (runtime,) = [d for d in yaml.safe_load_all(open(f"{REPO}/k8s/trainjob/clustertrainingruntime.yaml")) if d]
    pod = runtime["spec"]["template"]["spec"]["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == tj.CLUSTER_RUNTIME_GRACE_SECONDS
    for grace, queue, own in ((60, "team-a", True), (30, "team-a", False), (60, None, False)):
        spec = types.SimpleNamespace(max_restarts=tj.CLUSTER_RUNTIME_MAX_RESTARTS, gang=None, queue=queue)
        shape = types.SimpleNamespace(template={"spec": {"terminationGracePeriodSeconds": grace}}, container={})
        assert tj.needs_own_runtime(spec, shape) is own, (grace, queue)
