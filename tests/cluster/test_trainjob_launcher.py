"""`launch --backend trainjob|auto` and the verbs on TrainJobs, against Kubeflow Trainer v2 and JobSet.

kwok runs the pods (tests/cluster/trainer_v2.py, the `trainjob_cluster` fixture): a Job's pod exits
0 at once, one labelled KWOK_POD_FAIL exits with the code in its annotation. `launch` cannot label
pods, so a failing job is `launch --dry-run`'s objects with those two added to our runtimePatches
entry, created the way `launch` creates them (launcher.k8s.jobs.create_job).
"""

from __future__ import annotations

import json

import pytest
import yaml

from launcher.k8s.jobs import create_job
from tests.cluster.conftest import KWOK_POD_FAIL
from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.helpers import EXAMPLE
from trainer import contract

pytestmark = pytest.mark.cluster

GROUP, VERSION = "trainer.kubeflow.org", "v1alpha1"


@pytest.fixture
def api(trainjob_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", trainjob_cluster)
    from launcher.k8s import api as client

    return client.connect()


def trainjob(api, ns: str, name: str) -> dict | None:
    from launcher.k8s.api import read

    return read(api, ns, "TrainJob", name)


def finished(api, ns: str, name: str) -> str | None:
    job = trainjob(api, ns, name) or {}
    return next((c["type"] for c in (job.get("status") or {}).get("conditions") or []
                 if c["type"] in ("Complete", "Failed") and c["status"] == "True"), None)


def leftovers(api, ns: str, name: str) -> dict:
    selector = f"{contract.LABEL_JOB}={name}"
    return {
        "trainjobs": [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "trainjobs")["items"]],
        "runtimes": [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(
            GROUP, VERSION, ns, "trainingruntimes")["items"]],
        "configmaps": [c.metadata.name for c in api.core.list_namespaced_config_map(ns, label_selector=selector).items],
        "pdbs": [p.metadata.name for p in api.policy.list_namespaced_pod_disruption_budget(
            ns, label_selector=selector).items],
    }


NOTHING = {"trainjobs": [], "runtimes": [], "configmaps": [], "pdbs": []}


def cancel_leaves_nothing(api, capsys, ns: str, name: str) -> None:
    code, out, err = launch(capsys, "cancel", name, "-n", ns)
    assert code == 0 and f"cancelled {ns}/{name}" in out, err
    wait(lambda: leftovers(api, ns, name) == NOTHING, 30, "nothing left", lambda: str(leftovers(api, ns, name)))


def test_launch_trainjob_runs_to_success_and_list_status_logs_cancel_work_on_it(api, capsys, kwok_logs):
    from tests.cluster.conftest import TRAINJOB_LOGS_FILE, TRAINJOB_LOGS_NAMESPACE
    from tests.cluster.test_operator_faults import cri_line

    ns = TRAINJOB_LOGS_NAMESPACE  # kwok serves the `node` container's log of its pods (tests/cluster/conftest.py)
    from kubernetes.client.exceptions import ApiException

    for create in (lambda: api.core.create_namespace({"metadata": {"name": ns}}),
                   lambda: api.core.create_namespaced_service_account(ns, {"metadata": {"name": "default"}})):
        try:
            create()
        except ApiException as e:
            if e.status != 409:
                raise
    (kwok_logs / f"{TRAINJOB_LOGS_FILE}.log").write_text(cri_line("hello from node"))
    code, out, err = launch(capsys, EXAMPLE, "--backend", "trainjob", "--gpus", "16", "--gpus-per-node", "8",
                            "--checkpoint", "s3://b/c", "-n", ns, "--name", "v2", "--", "--steps", "5")
    assert code == 0, err
    assert f"created TrainJob {ns}/v2: 2 pod(s) x 8 GPU(s)" in out
    job = trainjob(api, ns, "v2")
    assert job["spec"]["runtimeRef"]["kind"] == "ClusterTrainingRuntime"
    assert wait(lambda: finished(api, ns, "v2"), 120, "the TrainJob to finish") == "Complete"
    pods = api.core.list_namespaced_pod(ns, label_selector="jobset.sigs.k8s.io/jobset-name=v2").items
    assert len(pods) == 2
    for pod in pods:
        (c,) = pod.spec.containers
        env = {e.name: e.value for e in c.env}
        assert c.name == "node" and c.args == ["train.py", "--steps", "5"] or c.args[1:] == ["--steps", "5"]
        assert env["PET_NPROC_PER_NODE"] == "8" and env[contract.ENV_RUN_ID] == "v2"
        assert pod.metadata.labels[contract.LABEL_JOB] == "v2"
        assert {v.name for v in pod.spec.volumes} >= {"dshm", "code"}  # our patch's volumes, merged by name
    cm = api.core.read_namespaced_config_map("v2-code", ns)
    assert (cm.metadata.owner_references[0].kind, cm.metadata.owner_references[0].uid) == (
        "TrainJob", job["metadata"]["uid"])

    code, out, err = launch(capsys, "list", "-n", ns)
    assert code == 0 and "v2" in out and "Succeeded" in out, out + err
    code, out, err = launch(capsys, "status", "v2", "-n", ns)
    assert code == 0 and f"{ns}/v2: Succeeded" in out, out + err
    code, out, err = launch(capsys, "status", "v2", "-n", ns, "-o", "json")
    doc = json.loads(out)
    assert (doc["state"], doc["expected_pods"], doc["restarts"], doc["retries_left"]) == ("Succeeded", 2, 0, 3)
    assert sorted(p["replica"] for p in doc["pods"]) == ["node-0", "node-1"]
    code, out, err = launch(capsys, "logs", "v2", "-n", ns)
    assert code == 0, err
    assert sorted(out.splitlines()) == ["[node-0] hello from node", "[node-1] hello from node"], out
    cancel_leaves_nothing(api, capsys, ns, "v2")


def failing_objects(capsys, ns: str, name: str, exit_code: int, *flags: str) -> list[dict]:
    """`launch --backend trainjob --dry-run`'s objects, with kwok told to fail the trainer with exit_code."""
    code, out, err = launch(capsys, EXAMPLE, "--backend", "trainjob", "--checkpoint", "s3://b/c", "-n", ns,
                            "--name", name, "--dry-run", *flags)
    assert code == 0, err
    objects = list(yaml.safe_load_all(out))
    patch = objects[0]["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    meta = patch["template"]["spec"]["template"]["metadata"]
    meta["labels"][KWOK_POD_FAIL] = "true"
    meta["annotations"] = {f"{KWOK_POD_FAIL}/exit-code": str(exit_code)}
    return objects


def test_max_restarts_is_the_jobs_own_runtimes_budget_and_status_shows_it_spent(api, capsys):
    """--max-restarts 1: a TrainingRuntime of the job's own, owned by it; a retryable exit spends the budget."""
    ns = namespace(api)
    objects = failing_objects(capsys, ns, "infra", contract.ExitCode.INFRA, "--max-restarts", "1", "--nodes", "2")
    assert [o["kind"] for o in objects][:2] == ["TrainJob", "TrainingRuntime"]
    create_job(api, ns, objects)
    job = trainjob(api, ns, "infra")
    runtime = api.custom.get_namespaced_custom_object(GROUP, VERSION, ns, "trainingruntimes", "infra")
    (owner,) = runtime["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("TrainJob", job["metadata"]["uid"])
    assert wait(lambda: finished(api, ns, "infra"), 180, "the TrainJob to fail") == "Failed"
    code, out, err = launch(capsys, "status", "infra", "-n", ns, "-o", "json")
    doc = json.loads(out)
    assert (doc["state"], doc["restarts"], doc["retries_left"]) == ("Failed", 1, 0), doc
    assert any(c["exit_code"] == contract.ExitCode.INFRA and c["retried"] for c in doc["causes"]), doc["causes"]
    code, out, err = launch(capsys, "status", "infra", "-n", ns)
    assert code == 0 and f"{ns}/infra: Failed" in out, out + err
    cancel_leaves_nothing(api, capsys, ns, "infra")


def test_a_user_error_fails_at_once_and_status_names_the_exit(api, capsys):
    ns = namespace(api)
    create_job(api, ns, failing_objects(capsys, ns, "bad", contract.ExitCode.USER_ERROR))
    assert wait(lambda: finished(api, ns, "bad"), 120, "the TrainJob to fail") == "Failed"
    code, out, err = launch(capsys, "status", "bad", "-n", ns, "-o", "json")
    doc = json.loads(out)
    assert (doc["state"], doc["restarts"], doc["retries_left"]) == ("Failed", 0, 3), doc
    assert [(c["replica"], c["exit_code"], c["retried"]) for c in doc["causes"]] == [("node-0", 1, False)]
    cancel_leaves_nothing(api, capsys, ns, "bad")


def test_auto_keeps_pytorchjob_where_both_are_served_unless_the_config_says_trainjob(api, capsys, tmp_path,
                                                                                     monkeypatch):
    ns = namespace(api)
    code, out, err = launch(capsys, EXAMPLE, "--backend", "auto", "--checkpoint", "s3://b/c", "-n", ns,
                            "--name", "auto-a")
    assert code == 0 and "created PyTorchJob" in out, err
    monkeypatch.chdir(tmp_path)
    (tmp_path / "launch.yaml").write_text("backend: trainjob\n")
    code, out, err = launch(capsys, EXAMPLE, "--backend", "auto", "--checkpoint", "s3://b/c", "-n", ns,
                            "--name", "auto-b")
    assert code == 0 and "created TrainJob" in out, err
    code, out, err = launch(capsys, "list", "-n", ns, "-o", "json")
    assert sorted(r["name"] for r in json.loads(out)) == ["auto-a", "auto-b"]
    for name in ("auto-a", "auto-b"):
        assert launch(capsys, "cancel", name, "-n", ns)[0] == 0


def test_a_missing_cluster_runtime_is_named_before_anything_is_created(api, capsys):
    ns = namespace(api)
    api.custom.delete_cluster_custom_object(GROUP, VERSION, "clustertrainingruntimes", "kubetrain")
    try:
        code, out, err = launch(capsys, EXAMPLE, "--backend", "trainjob", "--checkpoint", "s3://b/c", "-n", ns,
                                "--name", "x")
        assert code == 2 and len(err.splitlines()) == 1 and "no ClusterTrainingRuntime 'kubetrain'" in err, err
        assert leftovers(api, ns, "x") == NOTHING
    finally:
        from tests.cluster import trainer_v2

        trainer_v2.install_runtime(api.custom)


def test_a_schedule_with_backend_trainjob_submits_its_runs_as_trainjobs(api, trainjob_cluster, capsys, tmp_path):
    """The submitter, as its pod would run it with its own ServiceAccount's token, creates a TrainJob and waits."""
    from launcher.schedule.spec import SubmitExit
    from tests.cluster.test_schedule import create_schedule, job_pod, run_submitter, submitter_kubeconfig, trigger

    ns = namespace(api)
    create_schedule(capsys, ns, "nightly-v2", "--backend", "trainjob")
    run = trigger(capsys, ns, "nightly-v2")
    r = run_submitter(job_pod(api, ns, run), submitter_kubeconfig(api, trainjob_cluster, ns, tmp_path / "sa"))
    assert r.returncode == SubmitExit.OK, r.stdout + r.stderr
    assert f"created TrainJob {ns}/{run}" in r.stdout and f"TrainJob {ns}/{run}: Succeeded" in r.stdout, r.stdout
    job = trainjob(api, ns, run)
    env = {e["name"]: e["value"] for e in job["spec"]["trainer"]["env"]}
    assert env[contract.ENV_RUN_ID] == run and env[contract.ENV_WARM_START_FROM] == contract.WARM_START_LATEST
    assert job["metadata"]["labels"][contract.LABEL_SCHEDULE] == "nightly-v2"


def _held_trainjob(api, capsys, kwok_logs, *flags: str) -> str:
    """A 2-node TrainJob named "held", which kwok leaves running (k8s/kwok/stages.yaml), in the namespace
    whose pods' log kwok serves from one file: a runtime's resume line, read back by chaos."""
    from tests.cluster.conftest import TRAINJOB_LOGS_FILE, TRAINJOB_LOGS_NAMESPACE
    from tests.cluster.test_chaos_cluster import _namespace
    from tests.cluster.test_operator_faults import cri_line

    ns = _namespace(api, TRAINJOB_LOGS_NAMESPACE)
    # An earlier test's "held" is gone once cancelled, but its pods go with the garbage collector, later:
    # they carry the same JobSet label, so wait them out rather than take them for this job's.
    wait(lambda: not running_nodes(api, ns, any_phase=True), 120, "the pods of an earlier job named held to go")
    (kwok_logs / f"{TRAINJOB_LOGS_FILE}.log").write_text(cri_line(contract.LOG_RESUMED.format(step=1200)))
    code, out, err = launch(capsys, EXAMPLE, "--backend", "trainjob", "--gpus", "16", "--gpus-per-node", "8",
                            "--checkpoint", "s3://b/c", "-n", ns, "--name", "held", *flags)
    assert code == 0 and "created TrainJob" in out, err
    return ns


def running_nodes(api, ns: str, any_phase: bool = False) -> dict[str, str]:
    """node rank -> pod UID of the held TrainJob's running pods (any_phase: of all its pods)."""
    from launcher.backends import trainjob as backend

    return {p.metadata.labels[backend.COMPLETION_INDEX_LABEL]: p.metadata.uid for p in api.core.list_namespaced_pod(
        ns, label_selector=f"{backend.POD_JOB_LABEL}=held").items
        if any_phase or (p.status.phase == "Running" and not p.metadata.deletion_timestamp)}


def test_chaos_kill_pod_on_a_trainjob_finds_the_replacement_by_node_rank_and_reads_its_log(api, capsys, kwok_logs):
    # A TrainJob's replacement pod has a new name (the Job controller's suffix), so chaos must follow the
    # replica (node-1) and a new UID. What the cluster does about the kill is not what this shows: kwok
    # finishes a deletion itself (its pod-delete stage drops the Job's tracking finalizer), so the Job
    # controller sees a pod vanish without an exit and makes a new one; under a kubelet the pod would fail
    # with 137 and restart the JobSet. The exit codes' policy is shown by the KWOK_POD_FAIL tests above.
    ns = _held_trainjob(api, capsys, kwok_logs)
    try:
        first = wait(lambda: (lambda r: r if len(r) == 2 else None)(running_nodes(api, ns)), 120, "both nodes")
        code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--kill-pod", "worker-1")
        assert code == 2 and len(err.splitlines()) == 1 and "it has node-0, node-1" in err, out + err
        code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--kill-pod", "node-1", "--count", "2",
                                "--every", "2s", "--wait", "120s", "--seed", "1")
        assert code == 0, out + err
        assert "fault 1/2: deleted node-1 (held-node-0-1-" in out and "fault 2/2: deleted node-1" in out, out
        assert out.count("resumed from step 1200") == 2, out
        now = wait(lambda: (lambda r: r if len(r) == 2 else None)(running_nodes(api, ns)), 120, "both nodes again")
        assert now["1"] != first["1"]
        assert "pods recreated 2 time(s) during chaos" in out, out
    finally:
        cancel_leaves_nothing(api, capsys, ns, "held")


def test_chaos_eviction_of_a_trainjob_pod_replaces_that_pod_only_and_spends_no_budget(api, capsys, kwok_logs):
    # An eviction marks the pod DisruptionTarget: the runtime's podFailurePolicy ignores it, so its Job makes
    # a new pod for that node rank and the JobSet does not restart (the contract: disruptions are free).
    # (kwok finishes the deletion itself, see above: the eviction path, the PDB and the replacement are
    # what this shows.)
    ns = _held_trainjob(api, capsys, kwok_logs)
    try:
        first = wait(lambda: (lambda r: r if len(r) == 2 else None)(running_nodes(api, ns)), 120, "both nodes")

        def evicted() -> str:
            # The PDB's disruptionsAllowed is computed by the disruption controller shortly after the pods run.
            code, out, err = launch(capsys, "chaos", "held", "-n", ns, "--evict-with-grace", "5", "--wait", "120s",
                                    "--seed", "1")
            return out if code == 0 else ""

        out = wait(evicted, 90, "an eviction the PodDisruptionBudget allows")
        assert "evicted node-" in out and "grace 5s" in out and "resumed from step 1200" in out, out
        now = wait(lambda: (lambda r: r if len(r) == 2 else None)(running_nodes(api, ns)), 120, "both nodes again")
        assert len(set(now.values()) & set(first.values())) == 1  # the other node's pod kept running
        def status() -> dict | None:  # the TrainJob's status follows its Jobs' a moment later
            doc = json.loads(launch(capsys, "status", "held", "-n", ns, "-o", "json")[1])
            return doc if doc["state"] == "Running" else None

        doc = wait(status, 60, "the TrainJob to say Running")
        assert (doc["restarts"], doc["retries_left"]) == (0, 3), doc
    finally:
        cancel_leaves_nothing(api, capsys, ns, "held")
