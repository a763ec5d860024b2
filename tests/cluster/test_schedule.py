"""`launch schedule` against the real control plane, operator and kwok nodes.

kwok's nodes run no containers, and kwok reports any Job's pod as exited 0 at
once, which would fake the submitter's success: the tests keep the submitter
pods off every node (a nodeSelector no node matches), so they stay Pending
and their Jobs active. The submitter is proven as the pod would run it: `python -m launcher.submit` as a
local process with the pod's environment (its downward-API fields resolved
from the real Pod the Job controller made) and a kubeconfig holding a token
of the submitter's ServiceAccount from the TokenRequest API, so every call it
makes is checked by RBAC as the least-privileged identity. Its exit code is
then reported on the pod as a kubelet would, and the Job controller decides.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import yaml

from launcher.schedule.render import SUBMITTER, SUBMITTER_CONTAINER
from launcher.schedule.spec import SubmitExit
from tests.cluster.test_launcher_against_apiserver import launch, namespace
from tests.cluster.test_operator_runs_our_jobs import wait
from tests.helpers import EXAMPLE, REPO
from trainer import contract

pytestmark = pytest.mark.cluster

NO_SUCH_GPU = ["--gpu-type", "NVIDIA-B200"]  # no kwok node has it: the run's pods stay Pending


@pytest.fixture
def api(operator_cluster, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", operator_cluster)
    from launcher.k8s import api as client

    return client.connect()


def create_schedule(capsys, ns: str, name: str, *flags: str, cron: str = "0 3 * * *") -> None:
    code, out, err = launch(capsys, "schedule", EXAMPLE, "--cron", cron, "--time-zone", "Europe/Berlin",
                            "--gpus", "8", "--checkpoint", "s3://b/ckpts", "--warm-start-from", "latest",
                            "-n", ns, "--name", name, *flags, "--", "--steps", "5")
    assert code == 0, err
    assert f"created schedule {ns}/{name}" in out
    keep_submitters_off_kwok(ns, name)


def keep_submitters_off_kwok(ns: str, name: str) -> None:
    """Test setup only: kwok would report the submitter pod exited 0 without running it."""
    from kubernetes import client

    from launcher.k8s import api as kt

    client.BatchV1Api(kt.connect().core.api_client).patch_namespaced_cron_job(name, ns, {"spec": {"jobTemplate": {
        "spec": {"template": {"spec": {"nodeSelector": {"kubetrain.dev/test": "no-such-node"}}}}}}})


def trigger(capsys, ns: str, name: str) -> str:
    code, out, err = launch(capsys, "schedule", "trigger", name, "-n", ns)
    assert code == 0, err
    run = out.split("triggered run ", 1)[1].split(":", 1)[0].split("/", 1)[1]
    assert contract.parse_scheduled_run_name(run) is not None and run.startswith(f"{name}-")
    return run


def submitter_kubeconfig(api, admin_kubeconfig: str, ns: str, path) -> str:
    """A kubeconfig holding a fresh token of the submitter's ServiceAccount (TokenRequest API)."""
    token = api.core.create_namespaced_service_account_token(SUBMITTER, ns, {
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {"expirationSeconds": 3600}}).status.token
    admin = yaml.safe_load(open(admin_kubeconfig))
    config = {**admin, "users": [{"name": "submitter", "user": {"token": token}}],
              "contexts": [{"name": "test", "context": {"cluster": "test", "user": "submitter", "namespace": ns}}]}
    path.write_text(yaml.safe_dump(config))
    return str(path)


def job_pod(api, ns: str, run: str):
    """The Pod the Job controller made for the run's Job."""
    def get():
        pods = api.core.list_namespaced_pod(ns, label_selector=f"{contract.JOB_NAME_LABEL}={run}").items
        return pods[0] if pods else None

    return wait(get, 30, f"the pod of Job {run}")


def pod_env(pod) -> dict[str, str]:
    """The submitter container's environment as the kubelet would set it (downward API resolved)."""
    doc = pod.to_dict()
    meta = {"metadata.namespace": pod.metadata.namespace, "metadata.name": pod.metadata.name,
            **{f"metadata.labels['{k}']": v for k, v in (pod.metadata.labels or {}).items()}}
    container = next(c for c in doc["spec"]["containers"] if c["name"] == SUBMITTER_CONTAINER)
    env = {}
    for e in container["env"]:
        env[e["name"]] = e["value"] if e.get("value") is not None else meta[e["value_from"]["field_ref"]["field_path"]]
    return env


def run_submitter(pod, kubeconfig: str, timeout: float = 120) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX)}
    env = {**base, **pod_env(pod), "KUBECONFIG": kubeconfig, contract.ENV_SUBMIT_POLL_SECONDS: "1"}
    return subprocess.run([sys.executable, "-m", "launcher.submit"], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def report_exit(api, ns: str, pod, code: int) -> None:
    """The submitter container exited with `code`: report it on the pod, as the kubelet would."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    api.core.patch_namespaced_pod_status(pod.metadata.name, ns, {"status": {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [{"name": SUBMITTER_CONTAINER, "image": pod.spec.containers[0].image, "imageID": "",
                               "ready": False, "restartCount": 0,
                               "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else
                                                        "Error", "startedAt": now, "finishedAt": now}}}]}})


def job_condition(api, ns: str, name: str) -> str | None:
    from kubernetes import client

    job = client.BatchV1Api(api.core.api_client).read_namespaced_job(name, ns)
    for c in job.status.conditions or []:
        if c.status == "True" and c.type in ("Complete", "Failed"):
            return f"{c.type}:{c.reason}"
    return None


def pytorchjob(api, ns: str, name: str) -> dict:
    return api.custom.get_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs", name)


def test_a_triggered_run_is_submitted_as_the_submitter_runs_to_success_and_the_job_completes(
        api, operator_cluster, capsys, tmp_path):
    ns = namespace(api)
    create_schedule(capsys, ns, "nightly")
    from kubernetes import client

    cj = client.BatchV1Api(api.core.api_client).read_namespaced_cron_job("nightly", ns)
    assert (cj.spec.concurrency_policy, cj.spec.time_zone, cj.spec.schedule) == ("Forbid", "Europe/Berlin", "0 3 * * *")
    run = trigger(capsys, ns, "nightly")
    pod = job_pod(api, ns, run)
    assert pod.spec.service_account_name == SUBMITTER and pod.status.phase == "Pending"  # kept off kwok's nodes

    r = run_submitter(pod, submitter_kubeconfig(api, operator_cluster, ns, tmp_path / "sa-kubeconfig"))
    assert r.returncode == SubmitExit.OK, r.stdout + r.stderr
    assert f"created PyTorchJob {ns}/{run}" in r.stdout and "warm start from latest" in r.stdout
    assert f"PyTorchJob {ns}/{run}: Succeeded" in r.stdout

    job = pytorchjob(api, ns, run)
    assert job["metadata"]["labels"][contract.LABEL_SCHEDULE] == "nightly"
    master = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in master["env"]}
    assert env[contract.ENV_RUN_ID] == run and env[contract.ENV_WARM_START_FROM] == contract.WARM_START_LATEST

    # A retried submitter pod finds its run again instead of starting a second one.
    r = run_submitter(pod, submitter_kubeconfig(api, operator_cluster, ns, tmp_path / "sa-kubeconfig"))
    assert r.returncode == SubmitExit.OK and "exists (an earlier try of this Job created it)" in r.stdout
    assert len(api.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"]) == 1

    report_exit(api, ns, pod, r.returncode)
    assert wait(lambda: job_condition(api, ns, run), 30, "the Job to finish").startswith("Complete")
    code, out, _ = launch(capsys, "schedule", "list", "-n", ns)
    assert code == 0 and f"{run} Succeeded" in out and "0 3 * * * (Europe/Berlin)" in out


def test_a_failed_retrain_exits_1_and_shows_as_a_failed_job(api, operator_cluster, capsys, tmp_path):
    ns = namespace(api)
    # Its pods never schedule and the operator fails the job at its deadline: a retrain that failed.
    create_schedule(capsys, ns, "doomed", *NO_SUCH_GPU, "--max-runtime", "3")
    run = trigger(capsys, ns, "doomed")
    pod = job_pod(api, ns, run)
    r = run_submitter(pod, submitter_kubeconfig(api, operator_cluster, ns, tmp_path / "sa-kubeconfig"))
    assert r.returncode == SubmitExit.JOB_FAILED, r.stdout + r.stderr
    assert "the run failed" in r.stdout
    assert any(c["type"] == "Failed" and c["status"] == "True" for c in pytorchjob(api, ns, run)["status"]["conditions"])

    report_exit(api, ns, pod, r.returncode)
    # The podFailurePolicy fails the Job at once on the submitter's permanent exit codes: no retry.
    assert wait(lambda: job_condition(api, ns, run), 30, "the Job to fail") == "Failed:PodFailurePolicy"
    code, out, _ = launch(capsys, "schedule", "list", "-n", ns)
    assert code == 0 and f"{run} Failed" in out


def test_forbid_a_second_run_is_skipped_while_the_first_is_active(api, operator_cluster, capsys, tmp_path):
    ns = namespace(api)
    create_schedule(capsys, ns, "busy", *NO_SUCH_GPU)  # the first run's PyTorchJob stays active
    first = trigger(capsys, ns, "busy")
    kubeconfig = submitter_kubeconfig(api, operator_cluster, ns, tmp_path / "sa-kubeconfig")
    pod = job_pod(api, ns, first)
    base = {k: v for k, v in os.environ.items() if not k.startswith(contract.ENV_PREFIX)}
    proc = subprocess.Popen([sys.executable, "-m", "launcher.submit"], cwd=REPO, stdout=subprocess.DEVNULL,
                            env={**base, **pod_env(pod), "KUBECONFIG": kubeconfig,
                                 contract.ENV_SUBMIT_POLL_SECONDS: "1"})
    try:
        wait(lambda: api.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"], 30,
             "the first run's PyTorchJob")
    finally:
        proc.terminate()
        proc.wait(10)

    # `trigger` creates a Job itself, past the CronJob controller, so it honours Forbid itself.
    code, _, err = launch(capsys, "schedule", "trigger", "busy", "-n", ns)
    assert code == 1 and f"skipped: run {first} of schedule busy is still active" in err
    from kubernetes import client

    batch = client.BatchV1Api(api.core.api_client)
    assert [j.metadata.name for j in batch.list_namespaced_job(ns).items] == [first]

    # The first run's Job ended (say its pod was lost) while its PyTorchJob still trains: a run
    # started now, by the CronJob or by hand, is skipped by the submitter itself.
    batch.delete_namespaced_job(first, ns, propagation_policy="Background")
    wait(lambda: not batch.list_namespaced_job(ns).items, 30, "the first Job to go")
    second = contract.scheduled_run_name("busy", time.time() + 60)
    r = run_submitter(pod_with(pod, second), kubeconfig)
    assert r.returncode == SubmitExit.OK, r.stdout + r.stderr
    assert f"skipped: run {first} of schedule busy is still active" in r.stdout
    names = [j["metadata"]["name"] for j in api.custom.list_namespaced_custom_object(
        "kubeflow.org", "v1", ns, "pytorchjobs")["items"]]
    assert names == [first]


def pod_with(pod, job_name: str):
    """The same pod as if its Job were named `job_name`."""
    import copy

    other = copy.deepcopy(pod)
    other.metadata.labels = {**pod.metadata.labels, contract.JOB_NAME_LABEL: job_name}
    return other


# --- RBAC: what the submitter may do, asked of the API server as the submitter ---------------

ALLOWED = [
    ("create", "kubeflow.org", "pytorchjobs", None), ("get", "kubeflow.org", "pytorchjobs", None),
    ("list", "kubeflow.org", "pytorchjobs", None), ("delete", "kubeflow.org", "pytorchjobs", None),
    ("get", "", "configmaps", None), ("create", "", "configmaps", None), ("delete", "", "configmaps", None),
    ("create", "policy", "poddisruptionbudgets", None), ("delete", "policy", "poddisruptionbudgets", None),
    ("list", "", "resourcequotas", None), ("list", "batch", "jobs", None),
    ("update", "kubeflow.org", "pytorchjobs/finalizers", None),
    ("patch", "kubeflow.org", "pytorchjobs", None),  # the deadline nudge (launcher/submit.py)
]
DENIED = [
    ("create", "kubeflow.org", "pytorchjobs", "default"),  # another namespace
    ("list", "kubeflow.org", "pytorchjobs", ""),  # all namespaces
    ("get", "", "configmaps", "kube-system"),
    ("get", "", "secrets", None), ("list", "", "secrets", None), ("create", "", "secrets", None),
    ("create", "", "pods", None), ("create", "", "pods/exec", None), ("update", "kubeflow.org", "pytorchjobs", None),
    ("create", "batch", "cronjobs", None), ("create", "batch", "jobs", None),
    ("create", "rbac.authorization.k8s.io", "roles", None), ("create", "rbac.authorization.k8s.io", "rolebindings", None),
    ("list", "", "nodes", ""), ("get", "", "namespaces", ""), ("create", "", "namespaces", ""),
    ("create", "scheduling.k8s.io", "priorityclasses", ""),
    ("get", "apiextensions.k8s.io", "customresourcedefinitions", ""),
    ("create", "rbac.authorization.k8s.io", "clusterrolebindings", ""),
]


def can_i(api_client, verb: str, group: str, resource: str, ns: str) -> bool:
    from kubernetes import client

    sub = resource.split("/", 1)
    attrs = {"verb": verb, "group": group, "resource": sub[0], "namespace": ns}
    if len(sub) == 2:
        attrs["subresource"] = sub[1]
    review = client.AuthorizationV1Api(api_client).create_self_subject_access_review(
        {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
         "spec": {"resourceAttributes": attrs}})
    return bool(review.status.allowed)


@pytest.mark.parametrize("identity", ["impersonated", "token"])
def test_the_submitter_can_do_what_it_needs_in_its_namespace_and_nothing_else(
        api, operator_cluster, capsys, tmp_path, identity):
    import urllib3
    from kubernetes import config

    urllib3.disable_warnings(urllib3.exceptions.InsecureRequestWarning)  # the test cluster's self-signed cert
    ns = namespace(api)
    create_schedule(capsys, ns, "nightly")
    if identity == "impersonated":
        # As `kubectl auth can-i --as=system:serviceaccount:NS:kubetrain-submitter`: the admin asks the
        # API server to impersonate the ServiceAccount (it adds the ServiceAccount's groups).
        api_client = config.new_client_from_config(config_file=operator_cluster)
        api_client.set_default_header("Impersonate-User", f"system:serviceaccount:{ns}:{SUBMITTER}")
    else:
        api_client = config.new_client_from_config(
            config_file=submitter_kubeconfig(api, operator_cluster, ns, tmp_path / "sa-kubeconfig"))
    got = {f"{v} {g}/{r} in {n if n is not None else ns!r}": can_i(api_client, v, g, r, ns if n is None else n)
           for v, g, r, n in ALLOWED + DENIED}
    want = {f"{v} {g}/{r} in {n if n is not None else ns!r}": (v, g, r, n) in ALLOWED for v, g, r, n in ALLOWED + DENIED}
    assert got == want


def test_a_scheduled_run_beside_a_triggered_one_is_skipped_by_its_submitter(api, operator_cluster, capsys, tmp_path):
    from kubernetes import client

    ns = namespace(api)
    create_schedule(capsys, ns, "minutely", cron="* * * * *")
    first = trigger(capsys, ns, "minutely")  # its pod stays Pending: an active run
    batch = client.BatchV1Api(api.core.api_client)

    def scheduled_job():
        return [j for j in batch.list_namespaced_job(ns).items if j.metadata.name != first]

    # The CronJob controller does not count a Job it did not make as active (it only reports an
    # UnexpectedJob event), so at the next minute it starts its own run despite Forbid...
    scheduled = wait(scheduled_job, 75, "the CronJob controller's own Job")[0].metadata.name
    # ...whose submitter sees the older active run and skips: still one run at a time.
    r = run_submitter(job_pod(api, ns, scheduled), submitter_kubeconfig(api, operator_cluster, ns,
                                                                        tmp_path / "sa-kubeconfig"))
    assert r.returncode == SubmitExit.OK, r.stdout + r.stderr
    assert f"skipped: run {first} of schedule minutely is still active" in r.stdout
    assert api.custom.list_namespaced_custom_object("kubeflow.org", "v1", ns, "pytorchjobs")["items"] == []
    # The controller's own Job is active in its eyes: a trigger now is skipped by launch.
    assert [a.name for a in batch.read_namespaced_cron_job("minutely", ns).status.active] == [scheduled]
    code, _, err = launch(capsys, "schedule", "trigger", "minutely", "-n", ns)
    assert code == 1 and "still active (concurrencyPolicy Forbid)" in err
    assert launch(capsys, "schedule", "delete", "minutely", "-n", ns)[0] == 0  # no more runs every minute


def test_delete_removes_the_schedule_and_a_failed_create_leaves_nothing_behind(api, capsys):
    from kubernetes import client

    ns = namespace(api)
    batch = client.BatchV1Api(api.core.api_client)
    # Something else holds the stored spec's name: the CronJob created before it is removed again.
    api.core.create_namespaced_config_map(ns, {"metadata": {"name": "taken-schedule"}})
    code, _, err = launch(capsys, "schedule", EXAMPLE, "--cron", "@daily", "--gpus", "8", "--checkpoint", "s3://b/c",
                          "-n", ns, "--name", "taken")
    assert code == 2 and "ConfigMap 'taken-schedule' exists" in err and err.count("\n") == 1
    assert batch.list_namespaced_cron_job(ns).items == []

    create_schedule(capsys, ns, "nightly")
    create_schedule(capsys, ns, "weekly")  # the second shares (and refreshes) the namespace's submitter RBAC
    code, out, _ = launch(capsys, "schedule", "delete", "nightly", "-n", ns)
    assert code == 0 and f"deleted schedule {ns}/nightly" in out
    assert [c.metadata.name for c in batch.list_namespaced_cron_job(ns).items] == ["weekly"]
    assert "nightly-schedule" not in [c.metadata.name for c in api.core.list_namespaced_config_map(ns).items]
    assert api.core.read_namespaced_service_account(SUBMITTER, ns)  # weekly still needs it
    code, _, err = launch(capsys, "schedule", "delete", "nightly", "-n", ns)
    assert code == 2 and "no schedule 'nightly'" in err
